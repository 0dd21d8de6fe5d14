"""The guest builder: multiboot-compliant ELF32 output, a correct cache, and clear errors."""

from __future__ import annotations

import importlib.util
import shutil
import struct
from pathlib import Path

import pytest

GUESTS_DIR = Path(__file__).resolve().parent
MULTIBOOT_SEARCH_BYTES = 8192
MULTIBOOT_HEADER_MAGIC = 0x1BADB002
MULTIBOOT_AOUT_KLUDGE = 1 << 16
ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
EM_386 = 3
PT_LOAD = 1


def _load_builder():
    spec = importlib.util.spec_from_file_location("pyhv_test_guest_build_under_test", GUESTS_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_builder()


@pytest.fixture
def source_copy(tmp_path):
    """A scratch copy of the guest sources, to break without touching the real ones."""
    copy = tmp_path / "src"
    copy.mkdir()
    for shared in build.SHARED_SOURCES + ("hello.S",):
        shutil.copy(GUESTS_DIR / shared, copy / shared)
    return copy


def _load_segments(image: bytes):
    e_entry, e_phoff = struct.unpack_from("<II", image, 24)
    e_phentsize, e_phnum = struct.unpack_from("<HH", image, 42)
    segments = []
    for index in range(e_phnum):
        p_type, _offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            "<IIIIII", image, e_phoff + index * e_phentsize
        )
        if p_type == PT_LOAD:
            segments.append((p_paddr, p_filesz, p_memsz))
    return e_entry, segments


@pytest.mark.parametrize("name", build.guest_names())
def test_every_guest_is_a_multiboot_elf32_kernel(name, tmp_path):
    image = build.build_guest(name, tmp_path).read_bytes()
    assert image[:4] == ELF_MAGIC and image[4] == ELFCLASS32
    assert struct.unpack_from("<H", image, 18)[0] == EM_386

    header_offsets = [
        offset for offset in range(0, MULTIBOOT_SEARCH_BYTES - 12, 4)
        if struct.unpack_from("<I", image, offset)[0] == MULTIBOOT_HEADER_MAGIC
    ]
    # A loader takes the first magic it finds (the symbol table may hold the constant too).
    assert header_offsets, "a multiboot header, 4-aligned, in the first 8 KiB"
    magic, flags, checksum = struct.unpack_from("<III", image, header_offsets[0])
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert not flags & MULTIBOOT_AOUT_KLUDGE, "loaded through its ELF program headers"

    entry, segments = _load_segments(image)
    assert segments
    assert any(start <= entry < start + filesz for start, filesz, _memsz in segments)
    assert all(start >= 0x100000 for start, _filesz, _memsz in segments), "loaded at or above 1 MiB"


def test_a_built_guest_is_reused_until_its_source_changes(source_copy, tmp_path):
    out = tmp_path / "out"
    first = build.build_guest("hello", out, source_copy)
    first_mtime = first.stat().st_mtime_ns
    again = build.build_guest("hello", out, source_copy)
    assert again == first and again.stat().st_mtime_ns == first_mtime

    with open(source_copy / "common.inc", "a") as common:
        common.write("        .data\n        .long 0x600dcafe\n")
    changed = build.build_guest("hello", out, source_copy)
    assert changed != first
    assert b"\xfe\xca\x0d\x60" in changed.read_bytes()
    assert sorted(path.name for path in out.iterdir()) == sorted([first.name, changed.name])


def test_unknown_guest_names_the_guest_and_the_known_ones(tmp_path):
    with pytest.raises(build.GuestBuildError) as raised:
        build.build_guest("no_such_guest", tmp_path)
    message = str(raised.value)
    assert "'no_such_guest'" in message and "no_such_guest.S" in message
    assert "hello" in message and "pio_mmio" in message


def test_assembler_error_names_the_file_and_line(source_copy, tmp_path):
    (source_copy / "broken.S").write_text(
        '        .include "common.inc"\nmain32:\n        movq %not_a_register, %eax\n'
    )
    with pytest.raises(build.GuestBuildError) as raised:
        build.build_guest("broken", tmp_path, source_copy)
    message = str(raised.value)
    assert f"assembling {source_copy / 'broken.S'}" in message
    assert "broken.S:3" in message
    assert not list(tmp_path.glob("broken-*.elf")), "no kernel is left behind"


def test_missing_shared_source_is_named(source_copy, tmp_path):
    (source_copy / "guest.ld").unlink()
    with pytest.raises(build.GuestBuildError, match=r"shared source .*guest\.ld is missing"):
        build.build_guest("hello", tmp_path, source_copy)


def test_link_error_names_the_file(source_copy, tmp_path):
    (source_copy / "unlinked.S").write_text('        .include "common.inc"\n        .globl main32\n')
    with pytest.raises(build.GuestBuildError) as raised:
        build.build_guest("unlinked", tmp_path, source_copy)
    message = str(raised.value)
    assert f"linking {source_copy / 'unlinked.S'}" in message and "main32" in message


def test_command_line_prints_the_kernel_path(tmp_path, capsys):
    assert build.main(["build.py", "hello", str(tmp_path)]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.parent == tmp_path and printed.is_file()


def test_command_line_reports_errors(tmp_path, capsys):
    assert build.main(["build.py"]) == 2
    assert "usage:" in capsys.readouterr().err
    assert build.main(["build.py", "no_such_guest", str(tmp_path)]) == 1
    assert "error: no test guest 'no_such_guest'" in capsys.readouterr().err

"""Multiboot v1: a.out-kludge and ELF32 images, the info block, mmap, modules, refusals."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import List, Tuple

import pytest

from boot_images import build_elf, multiboot_header
from pyhv.boot import load_kernel
from pyhv.boot.multiboot import split_modules
from pyhv.errors import BootError
from pyhv.memory import GuestMemory

MiB = 1 << 20
MBI = 0x9500
HEADER_OFFSET = 0x40
LOAD = 0x100000


def aout_kernel(tmp_path: Path, body: bytes = b"\x90" * 0x200, bss: int = 0x2000, load: int = LOAD,
                load_end: int = 0, entry_offset: int = 0x80, name: str = "kernel.bin") -> Path:
    size = HEADER_OFFSET + 48 + len(body)
    header = multiboot_header(aout=(load + HEADER_OFFSET, load, load_end, load + size + bss, load + entry_offset))
    image = bytes(HEADER_OFFSET) + header.ljust(48, b"\0") + body
    path = tmp_path / name
    path.write_bytes(image)
    return path


def c_string(memory: GuestMemory, addr: int) -> bytes:
    raw = memory.read(addr, 512)
    return raw[:raw.index(b"\0")]


def info(memory: GuestMemory) -> Tuple[int, ...]:
    return struct.unpack("<22I", memory.read(MBI, 88))


def modules(memory: GuestMemory) -> List[Tuple[int, int, bytes]]:
    fields = info(memory)
    count, table = fields[5], fields[6]
    out = []
    for i in range(count):
        start, end, string, _ = struct.unpack("<4I", memory.read(table + 16 * i, 16))
        out.append((start, end, c_string(memory, string)))
    return out


def test_aout_kludge_image_and_entry_state(tmp_path: Path, memory: GuestMemory) -> None:
    memory.fill(LOAD, 0x10000, 0xEE)
    kernel = aout_kernel(tmp_path)
    state = load_kernel(memory, kernel, cmdline="console=ttyS0")
    data = kernel.read_bytes()
    assert memory.read(LOAD, len(data)) == data  # load_addr maps to file offset 0
    assert memory.read(LOAD + len(data), 0x2000) == bytes(0x2000)  # bss zeroed
    assert state.rip == LOAD + 0x80
    assert state.gprs["rax"] == 0x2BADB002 and state.gprs["rbx"] == MBI
    assert not state.long_mode and state.cr0 & 1 and not state.cr0 & (1 << 31)
    assert state.cs.base == 0 and state.cs.limit == 0xFFFFFFFF and state.cs.db == 1
    assert state.ds.base == 0 and state.ds.limit == 0xFFFFFFFF
    assert not state.rflags & 0x200


def test_info_block_and_memory_map(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = aout_kernel(tmp_path)
    load_kernel(memory, kernel, cmdline="console=ttyS0 debug")
    (flags, mem_lower, mem_upper, boot_device, cmdline, _mods_count, _mods_addr,
     *_syms, mmap_length, mmap_addr) = info(memory)[:13]
    assert flags == (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
    assert mem_lower == 639
    assert mem_upper == (256 * MiB - MiB) // 1024
    assert boot_device == 0x8000FFFF
    # QEMU passes "<kernel file name> <-append>".
    assert c_string(memory, cmdline) == f"{kernel} console=ttyS0 debug".encode()
    assert c_string(memory, info(memory)[16]) == b"pyhv"
    entries = []
    for off in range(0, mmap_length, 24):
        size, base, length, kind = struct.unpack("<IQQI", memory.read(mmap_addr + off, 24))
        assert size == 20
        entries.append((base, length, kind))
    assert entries == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (MiB, 255 * MiB, 1)]


def test_empty_append_still_gets_the_file_name(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = aout_kernel(tmp_path)
    load_kernel(memory, kernel)
    assert c_string(memory, info(memory)[4]) == f"{kernel} ".encode()


def test_modules_from_comma_separated_initrd(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = aout_kernel(tmp_path)
    first = tmp_path / "mod1.bin"
    first.write_bytes(b"first module" * 500)
    second = tmp_path / "a,b.bin"  # a comma in a name is written ",," as in QEMU
    second.write_bytes(b"\x01\x02\x03")
    spec = f"{first} arg1 arg2,{tmp_path}/a,,b.bin"
    load_kernel(memory, kernel, Path(spec), "x")
    mods = modules(memory)
    assert [m[2] for m in mods] == [f"{first} arg1 arg2".encode(), f"{second}".encode()]
    kernel_end = LOAD + kernel.stat().st_size + 0x2000
    previous_end = kernel_end
    for (start, end, _), path in zip(mods, (first, second)):
        assert start % 4096 == 0 and start >= previous_end
        assert end - start == path.stat().st_size
        assert memory.read(start, end - start) == path.read_bytes()
        previous_end = end


def test_split_modules_escapes() -> None:
    assert split_modules("a,b c,d,,e") == ["a", "b c", "d,e"]
    assert split_modules("one") == ["one"]


def test_elf32_multiboot_kernel(tmp_path: Path, memory: GuestMemory) -> None:
    text = b"\xfa\xf4" * 100
    elf = build_elf([(0x200000, text, len(text) + 0x1000)], entry=0x200010, elf64=False,
                    vaddr_offset=0xC0000000, prologue=multiboot_header())
    kernel = tmp_path / "kernel.elf"
    kernel.write_bytes(elf)
    state = load_kernel(memory, kernel, cmdline="hello")
    assert memory.read(0x200000, len(text)) == text
    assert state.rip == 0x200010
    assert state.gprs["rbx"] == MBI
    assert c_string(memory, info(memory)[4]) == f"{kernel} hello".encode()


def test_bad_checksum_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = tmp_path / "badsum"
    kernel.write_bytes(bytes(64) + multiboot_header(aout=(LOAD + 64, LOAD, 0, 0, LOAD), bad_checksum=True) + bytes(64))
    with pytest.raises(BootError, match="badsum: multiboot header at offset 0x40 has a bad checksum"):
        load_kernel(memory, kernel)


def test_elf64_multiboot_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    elf = build_elf([(0x200000, b"\xf4" * 16, 16)], entry=0x200000, elf64=True, prologue=multiboot_header())
    kernel = tmp_path / "k64"
    kernel.write_bytes(elf)
    with pytest.raises(BootError, match="k64: a multiboot kernel must be ELF32"):
        load_kernel(memory, kernel)


def test_non_elf_without_aout_kludge_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = tmp_path / "raw"
    kernel.write_bytes(bytes(16) + multiboot_header() + bytes(64))
    with pytest.raises(BootError, match="raw: multiboot header without the a.out kludge .* needs an ELF image"):
        load_kernel(memory, kernel)


def test_aout_header_errors(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(bytes(16) + multiboot_header(aout=(LOAD, LOAD + 0x100, 0, 0, LOAD)) + bytes(32))
    with pytest.raises(BootError, match="header_addr 0x100000 is below load_addr 0x100100"):
        load_kernel(memory, kernel)
    kernel.write_bytes(bytes(16) + multiboot_header(aout=(LOAD + 16, LOAD, LOAD + 0x10000, 0, LOAD)) + bytes(32))
    with pytest.raises(BootError, match="load_end_addr 0x110000 asks for 65536 bytes"):
        load_kernel(memory, kernel)
    kernel.write_bytes(bytes(16) + multiboot_header(aout=(LOAD + 16, LOAD, 0, LOAD + 1, LOAD)) + bytes(32))
    with pytest.raises(BootError, match="bss_end_addr 0x100001 is below the image end"):
        load_kernel(memory, kernel)


def test_image_outside_ram_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = aout_kernel(tmp_path, load=300 * MiB)
    with pytest.raises(BootError, match=r"multiboot image \[0x12c00000, .*\) lies outside guest RAM"):
        load_kernel(memory, kernel)


def test_elf32_segment_outside_ram_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    elf = build_elf([(0x20000000, b"\xf4" * 16, 16)], entry=0x20000000, elf64=False, prologue=multiboot_header())
    kernel = tmp_path / "far"
    kernel.write_bytes(elf)
    with pytest.raises(BootError, match=r"far: ELF segment 0 \[0x20000000, 0x20000010\) lies outside guest RAM"):
        load_kernel(memory, kernel)


def test_image_over_the_boot_information_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = aout_kernel(tmp_path, load=0x8000)
    with pytest.raises(BootError, match="overlaps the boot GDT and information"):
        load_kernel(memory, kernel)


def test_missing_module_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = aout_kernel(tmp_path)
    with pytest.raises(BootError, match="multiboot module .*nope.bin: cannot read"):
        load_kernel(memory, kernel, Path(f"{tmp_path}/nope.bin args"))


def test_module_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    memory = GuestMemory(2 * MiB)
    kernel = aout_kernel(tmp_path)
    module = tmp_path / "huge.mod"
    module.write_bytes(bytes(2 * MiB))
    with pytest.raises(BootError, match="multiboot module .*huge.mod .* does not fit in guest RAM"):
        load_kernel(memory, kernel, module)


def test_names_reach_the_guest_as_spelled(tmp_path: Path, memory: GuestMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    aout_kernel(tmp_path)
    (tmp_path / "m.bin").write_bytes(b"module")
    load_kernel(memory, "./kernel.bin", ".//m.bin  two  spaces", "x")
    assert c_string(memory, info(memory)[4]) == b"./kernel.bin x"
    assert modules(memory)[0][2] == b".//m.bin  two  spaces"


def test_reserved_ranges_in_mmap_and_spared_by_modules(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = aout_kernel(tmp_path)
    module = tmp_path / "mod"
    module.write_bytes(b"m" * 100)
    load_kernel(memory, kernel, module, reserved=[(128 * MiB, 129 * MiB)])
    fields = info(memory)
    mmap_length, mmap_addr = fields[11], fields[12]
    entries = [struct.unpack("<IQQI", memory.read(mmap_addr + off, 24))[1:] for off in range(0, mmap_length, 24)]
    assert (128 * MiB, MiB, 2) in entries and (MiB, 127 * MiB, 1) in entries
    assert fields[2] == 127 * 1024  # mem_upper stops at the first hole above 1 MiB
    clash = [(LOAD + 0x1000, LOAD + 0x2000)]  # right where the module table would go
    with pytest.raises(BootError, match=r"would overwrite the reserved range \[0x101000, 0x102000\)"):
        load_kernel(memory, aout_kernel(tmp_path, bss=0), module, reserved=clash)

"""ELF parsing (PT_LOAD, PVH note) and booting an uncompressed ELF64 vmlinux."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from boot_images import build_elf, elf_note, pvh_note
from pyhv.boot import load_kernel
from pyhv.boot.elf import parse_elf
from pyhv.errors import BootError
from pyhv.memory import GuestMemory

KERNEL_MAP = 0xFFFFFFFF80000000


def test_pvh_note_is_found_in_either_width() -> None:
    for width in (4, 8):
        notes = elf_note(b"GNU", 3, b"build-id") + pvh_note(0x1000ABC, width)
        image = parse_elf(build_elf([(0x1000000, b"x" * 64, 64)], 0x1000000, notes=notes), "k")
        assert image.pvh_entry == 0x1000ABC


def test_no_pvh_note() -> None:
    image = parse_elf(build_elf([(0x1000000, b"x" * 64, 64)], 0x1000000, notes=elf_note(b"Xen", 5, b"abcd")), "k")
    assert image.pvh_entry is None


def test_virtual_entry_is_translated_through_its_segment() -> None:
    image = parse_elf(build_elf([(0x1000000, b"x" * 64, 0x1000)], KERNEL_MAP + 0x1000010, vaddr_offset=KERNEL_MAP), "k")
    assert image.physical_entry() == 0x1000010


def test_elf64_vmlinux_boots_with_a_zero_page(tmp_path: Path, memory: GuestMemory) -> None:
    text = b"\x48\x31\xc0" * 100
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(build_elf([(0x1000000, text, len(text) + 0x500)], 0x1000000, vaddr_offset=KERNEL_MAP))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"ramdisk" * 10)
    state = load_kernel(memory, kernel, initrd, "root=/dev/vda")
    assert state.long_mode and state.rip == 0x1000000 and state.gprs["rsi"] == 0x7000
    assert memory.read(0x1000000, len(text)) == text
    assert memory.read(0x7000 + 0x202, 4) == b"HdrS"
    assert memory.read_u16(0x7000 + 0x1FE) == 0xAA55
    assert memory.read_u8(0x7000 + 0x210) == 0xFF
    cmd = memory.read_u32(0x7000 + 0x228)
    assert memory.read(cmd, 14) == b"root=/dev/vda\0"
    image, size = memory.read_u32(0x7000 + 0x218), memory.read_u32(0x7000 + 0x21C)
    assert memory.read(image, size) == initrd.read_bytes() and image >= 0x1000000 + len(text) + 0x500
    assert memory.read_u8(0x7000 + 0x1E8) == 4  # e820 entries


def _corrupt(elf: bytes, offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(elf)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


GOOD = build_elf([(0x1000000, b"x" * 64, 64)], 0x1000000)


@pytest.mark.parametrize("data, problem", [
    (GOOD[:40], "ELF header truncated"),
    (_corrupt(GOOD, 4, "<B", 7), "unknown ELF class 7"),
    (_corrupt(GOOD, 5, "<B", 2), "big-endian"),
    (_corrupt(GOOD, 18, "<H", 40), "machine 40 is not x86"),
    (_corrupt(GOOD, 56, "<H", 0), "no program headers"),
    (_corrupt(GOOD, 56, "<H", 5000), "program headers at offset 0x40 .5000 entries. pass the end"),
    (_corrupt(GOOD, 64 + 8, "<Q", 1 << 40), r"segment 0 at file offset 0x10000000000 .* passes the end"),
    (_corrupt(GOOD, 64 + 40, "<Q", 1), "file size 0x40 > memory size 0x1"),
])
def test_malformed_elf_is_refused(tmp_path: Path, memory: GuestMemory, data: bytes, problem: str) -> None:
    kernel = tmp_path / "bad.elf"
    kernel.write_bytes(data)
    with pytest.raises(BootError, match=f"bad.elf: .*{problem}"):
        load_kernel(memory, kernel)


def test_segment_outside_ram_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(build_elf([(0x1000000, b"x", 1), (0xF0000000, b"y" * 16, 0x1000)], 0x1000000))
    with pytest.raises(BootError, match=r"vmlinux: ELF segment 1 \[0xf0000000, 0xf0001000\) lies outside guest RAM"):
        load_kernel(memory, kernel)


def test_elf32_without_multiboot_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = tmp_path / "k32"
    kernel.write_bytes(build_elf([(0x100000, b"x" * 16, 16)], 0x100000, elf64=False))
    with pytest.raises(BootError, match="k32: an ELF32 kernel needs a multiboot header"):
        load_kernel(memory, kernel)


def test_elf64_vmlinux_gets_the_rng_seed(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(GOOD)
    seed = b"\x5a" * 32
    load_kernel(memory, kernel, rng_seed=seed)
    setup_data = memory.read_u64(0x7000 + 0x250)
    assert setup_data != 0
    assert struct.unpack("<QII", memory.read(setup_data, 16)) == (0, 9, 32)  # last entry, SETUP_RNG_SEED
    assert memory.read(setup_data + 16, 32) == seed

"""The real Debian cloud kernel: header, LZ4 payload, decompressed vmlinux, zero page."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pyhv.boot import load_kernel
from pyhv.boot.bzimage import decompress_payload, parse_bzimage
from pyhv.boot.decompress import detect_format
from pyhv.boot.elf import ELFCLASS64, EM_X86_64, parse_elf
from pyhv.boot.lz4 import decompress_legacy
from pyhv.errors import BootError
from pyhv.memory import GuestMemory

MiB = 1 << 20


@pytest.fixture(scope="module")
def image(debian_kernel: Path):
    return parse_bzimage(debian_kernel.read_bytes(), str(debian_kernel))


@pytest.fixture(scope="module")
def vmlinux(image) -> bytes:
    return decompress_payload(image, 512 * MiB)


def test_header_parses(image) -> None:
    assert image.protocol >= 0x020C  # 64-bit entry exists from 2.12
    assert image.header.xloadflags & 1  # XLF_KERNEL_64
    assert image.header.relocatable_kernel
    assert image.header.init_size > len(image.data)
    assert image.header_bytes == image.data[0x1F1:0x202 + image.data[0x201]]


def test_payload_is_lz4(image) -> None:
    assert detect_format(image.payload()) == "lz4"


def test_vmlinux_is_elf64_entered_where_the_elf_says(image, vmlinux: bytes) -> None:
    elf = parse_elf(vmlinux, "vmlinux")
    assert elf.elf_class == ELFCLASS64 and elf.machine == EM_X86_64
    (e_entry,) = struct.unpack_from("<Q", vmlinux, 24)
    assert elf.physical_entry() == e_entry
    assert any(s.paddr <= e_entry < s.paddr + s.filesz for s in elf.segments)
    # Linked at LOAD_PHYSICAL_ADDR, which the header reports as pref_address.
    assert e_entry == image.header.pref_address == elf.low
    assert elf.pvh_entry is not None and elf.low <= elf.pvh_entry < elf.high


def test_pure_python_lz4_matches(image, vmlinux: bytes) -> None:
    payload = image.payload()
    assert decompress_legacy(payload, 512 * MiB, use_fast=False) == vmlinux


def test_load_kernel_builds_a_consistent_zero_page(debian_kernel: Path, image, vmlinux: bytes,
                                                   tmp_path: Path) -> None:
    memory = GuestMemory(256 * MiB)
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(b"070701" + bytes(3 * MiB))
    state = load_kernel(memory, debian_kernel, initrd, "console=ttyS0 panic=-1")
    elf = parse_elf(vmlinux, "vmlinux")
    assert state.rip == elf.physical_entry() and state.long_mode and state.gprs["rsi"] == 0x7000
    for seg in elf.segments:
        assert memory.read(seg.paddr, 4096) == vmlinux[seg.offset:seg.offset + min(4096, seg.filesz)].ljust(4096, b"\0")
    zero_page = memory.read(0x7000, 4096)
    header_end = 0x202 + image.data[0x201]
    # Copied header, apart from the fields the loader fills.
    assert zero_page[0x1F1:0x210] == image.data[0x1F1:0x210]
    assert zero_page[0x22C:header_end] == image.data[0x22C:header_end]
    assert zero_page[0x210] == 0xFF and zero_page[0x211] & 0x81 == 0x81
    cmd_line_ptr, = struct.unpack_from("<I", zero_page, 0x228)
    assert memory.read(cmd_line_ptr, 23) == b"console=ttyS0 panic=-1\0"
    ramdisk_image, ramdisk_size = struct.unpack_from("<II", zero_page, 0x218)
    footprint_end = image.header.pref_address + image.header.init_size
    assert ramdisk_size == initrd.stat().st_size and ramdisk_image >= footprint_end
    assert ramdisk_image + ramdisk_size <= min(image.header.initrd_addr_max + 1, 256 * MiB)
    entries = zero_page[0x1E8]
    last_addr, last_size, last_type = struct.unpack_from("<QQI", zero_page, 0x2D0 + 20 * (entries - 1))
    assert (last_addr + last_size, last_type) == (256 * MiB, 1)
    memory.close()


def test_too_little_ram_for_this_kernel(debian_kernel: Path, image) -> None:
    memory = GuestMemory(64 * MiB)
    needed = image.header.pref_address + image.header.init_size
    assert needed > 64 * MiB
    for decompress in (False, True):
        with pytest.raises(BootError, match="has 64 MiB below 4 GiB; raise -m"):
            load_kernel(memory, debian_kernel, decompress=decompress)
    memory.close()

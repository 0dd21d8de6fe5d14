"""Multiboot v1 kernels, loaded the way QEMU's -kernel loads them.

The image is an ELF32 (loaded by PT_LOAD at p_paddr) or, when header flag bit 16 is set,
an a.out-kludge image placed by the header's own addresses. Following QEMU, one buffer
starts at the kernel's load address: the kernel (page-aligned), then the module table,
the command lines and the boot loader name (page-aligned), then each module page-aligned.
The memory map and the info block sit at fixed low addresses (0x9000 and 0x9500).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

from ..cpu_state import CpuBootState
from ..errors import BootError
from ..memory import GuestMemory
from .cpu_entry import protected_mode_entry
from .e820 import E820_RAM, E820Entry, memory_map, ram_kib_above_1mib, ram_kib_below_640k
from .elf import ELFCLASS64, is_elf, load_segments, parse_elf
from .layout import BOOT_GDT_ADDR, MULTIBOOT_INFO_ADDR, MULTIBOOT_MMAP_ADDR, page_align_up

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH_LIMIT = 8192
HEADER_SIZE = 48  # magic, flags, checksum, five a.out addresses, four video fields
FLAG_VIDEO_MODE = 1 << 2
FLAG_AOUT_KLUDGE = 1 << 16
BOOTLOADER_NAME = "pyhv"

INFO_MEMORY = 1 << 0
INFO_BOOT_DEVICE = 1 << 1
INFO_CMDLINE = 1 << 2
INFO_MODULES = 1 << 3
INFO_MMAP = 1 << 6
INFO_BOOTLOADER_NAME = 1 << 9
INFO_SIZE = 88
MODULE_ENTRY_SIZE = 16
MMAP_ENTRY_SIZE = 24  # the leading size field (20) plus base, length and type
MMAP_AREA_SIZE = MULTIBOOT_INFO_ADDR - MULTIBOOT_MMAP_ADDR
BOOT_DEVICE_NONE = 0x8000FFFF  # first hard disk, no partition: what QEMU reports
LOW_AREA_END = MULTIBOOT_INFO_ADDR + INFO_SIZE  # GDT, stack, memory map and info block below this


class MultibootHeader(NamedTuple):
    offset: int  # in the file
    flags: int
    header_addr: int
    load_addr: int
    load_end_addr: int
    bss_end_addr: int
    entry_addr: int


def find_header(data: bytes) -> Tuple[Optional[MultibootHeader], Optional[int]]:
    """Search the first 8 KiB, 4-byte aligned, for a header with a valid checksum.

    Returns (header, None) when found, else (None, offset of a magic whose checksum is
    bad, or None if there is no magic at all).
    """
    bad_checksum_at = None
    limit = min(len(data), SEARCH_LIMIT) - 12
    for offset in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, offset)
        if magic != HEADER_MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFF_FFFF:
            if bad_checksum_at is None:
                bad_checksum_at = offset
            continue
        fields = data[offset + 12:offset + 32].ljust(20, b"\0")
        return MultibootHeader(offset, flags, *struct.unpack("<5I", fields)), None
    return None, bad_checksum_at


def split_modules(spec: str) -> List[str]:
    """Split QEMU's -initrd list for multiboot: commas separate modules, ',,' is a comma."""
    modules, current, i = [], [], 0
    while i < len(spec):
        if spec[i] == ",":
            if spec[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            modules.append("".join(current))
            current = []
        else:
            current.append(spec[i])
        i += 1
    modules.append("".join(current))
    return modules


def _load_aout(memory: GuestMemory, data: bytes, header: MultibootHeader, source: str) -> Tuple[int, int, int]:
    """Load an a.out-kludge image; return (load address, image end, entry)."""
    if header.offset + HEADER_SIZE - 16 > len(data):
        raise BootError(f"{source}: multiboot header at offset {header.offset:#x} is truncated")
    if header.header_addr < header.load_addr:
        raise BootError(
            f"{source}: multiboot header_addr {header.header_addr:#x} is below load_addr {header.load_addr:#x}"
        )
    text_offset = header.offset - (header.header_addr - header.load_addr)
    if text_offset < 0:
        raise BootError(
            f"{source}: multiboot header_addr {header.header_addr:#x} would put load_addr before the file start"
        )
    if header.load_end_addr:
        if header.load_end_addr < header.load_addr:
            raise BootError(f"{source}: multiboot load_end_addr {header.load_end_addr:#x} is below load_addr")
        load_size = header.load_end_addr - header.load_addr
        if text_offset + load_size > len(data):
            raise BootError(
                f"{source}: multiboot load_end_addr {header.load_end_addr:#x} asks for {load_size} bytes from "
                f"file offset {text_offset:#x}, the file has {len(data)}"
            )
    else:
        load_size = len(data) - text_offset
    end = header.load_addr + load_size
    if header.bss_end_addr:
        if header.bss_end_addr < end:
            raise BootError(f"{source}: multiboot bss_end_addr {header.bss_end_addr:#x} is below the image end {end:#x}")
        end = header.bss_end_addr
    if not memory.contains(header.load_addr, end - header.load_addr):
        raise BootError(
            f"{source}: multiboot image [{header.load_addr:#x}, {end:#x}) lies outside guest RAM "
            f"({memory.ram_size >> 20} MiB); give the guest more memory (-m)"
        )
    memory.write(header.load_addr, memoryview(data)[text_offset:text_offset + load_size])
    memory.fill(header.load_addr + load_size, end - header.load_addr - load_size)
    return header.load_addr, end, header.entry_addr


def _load_elf32(memory: GuestMemory, data: bytes, source: str) -> Tuple[int, int, int]:
    if not is_elf(data):
        raise BootError(f"{source}: multiboot header without the a.out kludge (flag bit 16) needs an ELF image")
    image = parse_elf(data, source)
    if image.elf_class == ELFCLASS64:
        raise BootError(f"{source}: a multiboot kernel must be ELF32; this is ELF64 (x86-64)")
    low, high = load_segments(memory, image, data, source)
    return low, high, image.physical_entry()


def _write_mmap(memory: GuestMemory, entries: Sequence[E820Entry], source: str) -> int:
    blob = b"".join(struct.pack("<IQQI", MMAP_ENTRY_SIZE - 4, e.addr, e.size, e.type) for e in entries)
    if len(blob) > MMAP_AREA_SIZE:
        raise BootError(f"{source}: memory map of {len(entries)} entries does not fit the multiboot area")
    memory.write(MULTIBOOT_MMAP_ADDR, blob)
    return len(blob)


class _Buffer:
    """Allocates guest memory after the kernel, as QEMU's mb_buf does."""

    def __init__(self, memory: GuestMemory, start: int, source: str, e820: Sequence[E820Entry]) -> None:
        self.memory, self.next, self.source = memory, start, source
        self.kept = [e for e in e820 if e.type != E820_RAM]

    def reserve(self, size: int, what: str) -> int:
        addr = self.next
        if not self.memory.contains(addr, size):
            raise BootError(
                f"{self.source}: {what} ({size} bytes at {addr:#x}) does not fit in guest RAM "
                f"({self.memory.ram_size >> 20} MiB); give the guest more memory (-m)"
            )
        for entry in self.kept:
            if addr < entry.end and entry.addr < addr + size:
                raise BootError(
                    f"{self.source}: {what} ({size} bytes at {addr:#x}) would overwrite the reserved range "
                    f"[{entry.addr:#x}, {entry.end:#x})"
                )
        self.next = addr + size
        return addr

    def put_string(self, text: str, what: str) -> int:
        data = text.encode("utf-8") + b"\0"
        addr = self.reserve(len(data), what)
        self.memory.write(addr, data)
        return addr


def load_multiboot(memory: GuestMemory, kernel: Union[str, Path], data: bytes, header: MultibootHeader,
                   initrd: Optional[Union[str, Path]], cmdline: str,
                   e820: Optional[Sequence[E820Entry]] = None) -> CpuBootState:
    """Load a multiboot kernel and its modules; return the 32-bit entry state.

    ``kernel`` and ``initrd`` are spelled as the user gave them: their text ends up in
    the guest's command lines.
    """
    source = str(kernel)
    if header.flags & FLAG_AOUT_KLUDGE:
        load_addr, end, entry = _load_aout(memory, data, header, source)
    else:
        load_addr, end, entry = _load_elf32(memory, data, source)
    if load_addr < LOW_AREA_END and end > BOOT_GDT_ADDR:
        raise BootError(
            f"{source}: multiboot image [{load_addr:#x}, {end:#x}) overlaps the boot GDT and information "
            f"at [{BOOT_GDT_ADDR:#x}, {LOW_AREA_END:#x})"
        )
    if not memory.contains(entry):
        raise BootError(f"{source}: multiboot entry point {entry:#x} is outside guest RAM")

    modules = split_modules(str(initrd)) if initrd is not None else []
    e820 = list(memory_map(memory) if e820 is None else e820)
    buffer = _Buffer(memory, page_align_up(end), source, e820)
    module_table = buffer.reserve(MODULE_ENTRY_SIZE * len(modules), "multiboot module table")
    module_cmdlines = [buffer.put_string(spec, "module command line") for spec in modules]
    # QEMU passes "<kernel file name> <-append string>", the name as given on the command line.
    kernel_cmdline = buffer.put_string(f"{source} {cmdline}", "kernel command line")
    loader_name = buffer.put_string(BOOTLOADER_NAME, "boot loader name")
    buffer.next = page_align_up(buffer.next)
    for index, spec in enumerate(modules):
        path = Path(spec.split(" ", 1)[0])
        try:
            size = path.stat().st_size
        except OSError as err:
            raise BootError(f"multiboot module {path}: cannot read: {err.strerror or err}") from err
        start = buffer.reserve(size, f"multiboot module {path}")
        try:
            with path.open("rb") as handle:
                got = handle.readinto(memory.view(start, size)) if size else 0
        except OSError as err:
            raise BootError(f"multiboot module {path}: cannot read: {err.strerror or err}") from err
        if got != size:
            raise BootError(f"multiboot module {path}: short read ({got} of {size} bytes)")
        buffer.next = page_align_up(buffer.next)
        memory.write(module_table + index * MODULE_ENTRY_SIZE,
                     struct.pack("<IIII", start, start + size, module_cmdlines[index], 0))

    mmap_length = _write_mmap(memory, e820, source)
    info = bytearray(INFO_SIZE)
    struct.pack_into("<IIIIIII", info, 0,
                     INFO_MEMORY | INFO_BOOT_DEVICE | INFO_CMDLINE | INFO_MODULES | INFO_MMAP | INFO_BOOTLOADER_NAME,
                     ram_kib_below_640k(e820), ram_kib_above_1mib(e820), BOOT_DEVICE_NONE,
                     kernel_cmdline, len(modules), module_table)
    struct.pack_into("<II", info, 44, mmap_length, MULTIBOOT_MMAP_ADDR)
    struct.pack_into("<I", info, 64, loader_name)
    memory.write(MULTIBOOT_INFO_ADDR, bytes(info))
    return protected_mode_entry(memory, entry, {"rax": BOOTLOADER_MAGIC, "rbx": MULTIBOOT_INFO_ADDR})

"""ELF kernel images: header and program-header parsing, PT_LOAD loading, and the PVH
entry note (XEN_ELFNOTE_PHYS32_ENTRY) that Linux and other PVH-capable kernels carry.

Segments load at their physical addresses (p_paddr), as QEMU and Firecracker load a
vmlinux; the virtual addresses of a Linux kernel are in the top 2 GiB and mean nothing
before paging is set up.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Tuple

from ..errors import BootError
from ..memory import GuestMemory

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18
XEN_NOTE_NAME = b"Xen"

# (e_ident class) -> (header format, header size, program header format, entry size)
_ELF_HEADER = {
    ELFCLASS32: ("<16sHHIIIIIHHHHHH", 52, "<IIIIIIII", 32),
    ELFCLASS64: ("<16sHHIQQQIHHHHHH", 64, "<IIQQQQQQ", 56),
}


class ElfSegment(NamedTuple):
    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int


@dataclass
class ElfImage:
    """What a loader needs from an ELF kernel."""

    elf_class: int  # ELFCLASS32 or ELFCLASS64
    machine: int
    entry: int  # e_entry as the file states it (virtual for some kernels)
    segments: List[ElfSegment] = field(default_factory=list)  # PT_LOAD only
    pvh_entry: Optional[int] = None  # 32-bit PVH entry point from the Xen ELF note

    @property
    def is_64bit(self) -> bool:
        return self.elf_class == ELFCLASS64

    @property
    def low(self) -> int:
        return min(seg.paddr for seg in self.segments)

    @property
    def high(self) -> int:
        return max(seg.paddr + seg.memsz for seg in self.segments)

    def physical_entry(self) -> int:
        """e_entry translated through the segment whose virtual range contains it."""
        for seg in self.segments:
            if seg.paddr <= self.entry < seg.paddr + seg.memsz:
                return self.entry  # already physical (Linux vmlinux: phys_startup_64)
        for seg in self.segments:
            if seg.vaddr <= self.entry < seg.vaddr + seg.memsz:
                return self.entry - seg.vaddr + seg.paddr
        return self.entry


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def _parse_notes(data: bytes, seg: ElfSegment, source: str) -> Optional[int]:
    """The PVH entry from a PT_NOTE segment's notes, if one is there."""
    pos = seg.offset
    end = seg.offset + seg.filesz
    while pos + 12 <= end:
        namesz, descsz, note_type = struct.unpack_from("<III", data, pos)
        name_start = pos + 12
        desc_start = name_start + ((namesz + 3) & ~3)
        next_pos = desc_start + ((descsz + 3) & ~3)
        if next_pos > end:
            raise BootError(f"{source}: ELF note at file offset {pos:#x} runs past its segment")
        name = data[name_start:name_start + namesz].rstrip(b"\0")
        if name == XEN_NOTE_NAME and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
            if descsz == 4:
                return struct.unpack_from("<I", data, desc_start)[0]
            if descsz == 8:
                return struct.unpack_from("<Q", data, desc_start)[0]
            raise BootError(f"{source}: PVH entry note at file offset {pos:#x} has a {descsz}-byte value")
        pos = next_pos
    return None


def parse_elf(data: bytes, source: str) -> ElfImage:
    """Parse an ELF executable's header, PT_LOAD segments and PVH note; check every
    offset against the file so a corrupt header gives a BootError, not an IndexError."""
    if not is_elf(data):
        raise BootError(f"{source}: not an ELF file")
    if len(data) < 16:
        raise BootError(f"{source}: ELF header truncated ({len(data)} bytes)")
    elf_class, byte_order = data[4], data[5]
    if elf_class not in _ELF_HEADER:
        raise BootError(f"{source}: unknown ELF class {elf_class}")
    if byte_order != ELFDATA2LSB:
        raise BootError(f"{source}: big-endian ELF cannot run on x86")
    header_fmt, header_size, phdr_fmt, phdr_size = _ELF_HEADER[elf_class]
    if len(data) < header_size:
        raise BootError(f"{source}: ELF header truncated ({len(data)} of {header_size} bytes)")
    (_, _e_type, machine, _version, entry, phoff, _shoff, _flags, _ehsize,
     phentsize, phnum, _shentsize, _shnum, _shstrndx) = struct.unpack_from(header_fmt, data)
    if machine not in (EM_386, EM_X86_64):
        raise BootError(f"{source}: ELF machine {machine} is not x86 (3) or x86-64 (62)")
    if phnum == 0:
        raise BootError(f"{source}: ELF file has no program headers")
    if phentsize != phdr_size:
        raise BootError(f"{source}: ELF program header size {phentsize}, expected {phdr_size}")
    if phoff + phnum * phentsize > len(data):
        raise BootError(
            f"{source}: ELF program headers at offset {phoff:#x} ({phnum} entries) pass the end of "
            f"the file ({len(data)} bytes)"
        )
    image = ElfImage(elf_class=elf_class, machine=machine, entry=entry)
    for index in range(phnum):
        fields = struct.unpack_from(phdr_fmt, data, phoff + index * phentsize)
        if elf_class == ELFCLASS64:
            p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _align = fields
        else:
            p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, _align = fields
        seg = ElfSegment(p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags)
        if p_type not in (PT_LOAD, PT_NOTE):
            continue
        if p_offset + p_filesz > len(data):
            raise BootError(
                f"{source}: ELF segment {index} at file offset {p_offset:#x} (+{p_filesz:#x}) passes "
                f"the end of the file ({len(data)} bytes)"
            )
        if p_type == PT_NOTE:
            found = _parse_notes(data, seg, source)
            if found is not None:
                image.pvh_entry = found
            continue
        if p_filesz > p_memsz:
            raise BootError(f"{source}: ELF segment {index} has file size {p_filesz:#x} > memory size {p_memsz:#x}")
        if p_memsz:
            image.segments.append(seg)
    if not image.segments:
        raise BootError(f"{source}: ELF file has no loadable (PT_LOAD) segment")
    return image


def check_segments_fit(memory: GuestMemory, image: ElfImage, source: str) -> None:
    for index, seg in enumerate(image.segments):
        if not memory.contains(seg.paddr, seg.memsz):
            raise BootError(
                f"{source}: ELF segment {index} [{seg.paddr:#x}, {seg.paddr + seg.memsz:#x}) lies outside "
                f"guest RAM ({memory.ram_size >> 20} MiB); give the guest more memory (-m)"
            )


def load_segments(memory: GuestMemory, image: ElfImage, data: bytes, source: str) -> Tuple[int, int]:
    """Copy every PT_LOAD segment to its physical address and zero its bss; return the
    [low, high) physical range the image occupies."""
    check_segments_fit(memory, image, source)
    view = memoryview(data)
    for seg in image.segments:
        memory.write(seg.paddr, view[seg.offset:seg.offset + seg.filesz])
        if seg.memsz > seg.filesz:
            memory.fill(seg.paddr + seg.filesz, seg.memsz - seg.filesz)
    return image.low, image.high

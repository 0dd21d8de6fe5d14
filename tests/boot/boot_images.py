"""Builders for synthetic kernel images (bzImage, ELF32/ELF64, multiboot) used by the boot tests.

Field layouts are written from the specifications (boot.rst, the ELF and multiboot
specs), independently of pyhv's own parsers, so a parser bug cannot hide in both.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from typing import List, Optional, Sequence, Tuple

PT_LOAD = 1
PT_NOTE = 4


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def elf_note(name: bytes, note_type: int, desc: bytes) -> bytes:
    name_z = name + b"\0"
    return (struct.pack("<III", len(name_z), len(desc), note_type)
            + name_z.ljust(_align(len(name_z), 4), b"\0") + desc.ljust(_align(len(desc), 4), b"\0"))


def pvh_note(entry: int, size: int = 8) -> bytes:
    return elf_note(b"Xen", 18, entry.to_bytes(size, "little"))


def build_elf(segments: Sequence[Tuple[int, bytes, int]], entry: int, elf64: bool = True,
              vaddr_offset: int = 0, notes: bytes = b"", machine: Optional[int] = None,
              prologue: bytes = b"") -> bytes:
    """An ELF executable with one PT_LOAD per (paddr, data, memsz) and optional PT_NOTE.

    ``prologue`` is placed right after the program headers (e.g. a multiboot header that
    must sit in the first 8 KiB); segments' data follow, each 16-byte aligned.
    """
    machine = machine if machine is not None else (62 if elf64 else 3)
    ehsize, phentsize = (64, 56) if elf64 else (52, 32)
    phnum = len(segments) + (1 if notes else 0)
    phoff = ehsize
    cursor = phoff + phnum * phentsize
    body = bytearray()
    prologue_offset = cursor
    body += prologue
    cursor += len(prologue)
    placed: List[Tuple[int, int, int, int]] = []  # (offset, paddr, filesz, memsz)
    for paddr, data, memsz in segments:
        pad = _align(cursor, 16) - cursor
        body += b"\0" * pad
        cursor += pad
        placed.append((cursor, paddr, len(data), memsz))
        body += data
        cursor += len(data)
    note_offset = cursor
    body += notes
    phdrs = bytearray()
    for offset, paddr, filesz, memsz in placed:
        vaddr = paddr + vaddr_offset
        if elf64:
            phdrs += struct.pack("<IIQQQQQQ", PT_LOAD, 7, offset, vaddr, paddr, filesz, memsz, 0x1000)
        else:
            phdrs += struct.pack("<IIIIIIII", PT_LOAD, offset, vaddr, paddr, filesz, memsz, 7, 0x1000)
    if notes:
        if elf64:
            phdrs += struct.pack("<IIQQQQQQ", PT_NOTE, 4, note_offset, 0, 0, len(notes), len(notes), 4)
        else:
            phdrs += struct.pack("<IIIIIIII", PT_NOTE, note_offset, 0, 0, len(notes), len(notes), 4, 4)
    ident = b"\x7fELF" + bytes([2 if elf64 else 1, 1, 1]) + bytes(9)
    if elf64:
        header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, machine, 1, entry, phoff, 0, 0,
                             ehsize, phentsize, phnum, 64, 0, 0)
    else:
        header = struct.pack("<16sHHIIIIIHHHHHH", ident, 2, machine, 1, entry, phoff, 0, 0,
                             ehsize, phentsize, phnum, 40, 0, 0)
    assert prologue_offset == len(header) + len(phdrs)
    return bytes(header + phdrs + body)


def build_bzimage(payload: bytes = b"", version: int = 0x020F, setup_sects: int = 4,
                  init_size: int = 0x400000, pref_address: int = 0x1000000,
                  kernel_alignment: int = 0x200000, relocatable: int = 1, xloadflags: int = 0x3,
                  initrd_addr_max: int = 0x7FFFFFFF, cmdline_size: int = 0x7FF,
                  loadflags: int = 0x01, code32_start: int = 0x100000, boot_flag: int = 0xAA55,
                  size_trailer: Optional[int] = None, syssize_extra: int = 0) -> bytes:
    """A bzImage: real-mode setup, then a protected-mode part holding ``payload``.

    ``size_trailer`` is appended after the payload (and counted in payload_length), as the
    kernel build appends the uncompressed size.
    """
    stub = b"\xf4" * 0x300  # stands in for the decompressor code (hlt)
    payload_offset = len(stub)
    blob = payload + (struct.pack("<I", size_trailer) if size_trailer is not None else b"")
    protected = stub + blob
    protected += b"\0" * (_align(len(protected), 16) - len(protected))
    setup = bytearray((setup_sects + 1) * 512)
    struct.pack_into("<B", setup, 0x1F1, setup_sects)
    struct.pack_into("<I", setup, 0x1F4, len(protected) // 16 + syssize_extra)
    struct.pack_into("<H", setup, 0x1FA, 0xFFFF)  # vid_mode: normal
    struct.pack_into("<H", setup, 0x1FE, boot_flag)
    setup[0x200:0x202] = bytes([0xEB, 0x6A])  # jump over the header, which ends at 0x26c
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<B", setup, 0x211, loadflags)
    struct.pack_into("<I", setup, 0x214, code32_start)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    struct.pack_into("<B", setup, 0x234, relocatable)
    struct.pack_into("<B", setup, 0x235, 21)
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<I", setup, 0x248, payload_offset)
    struct.pack_into("<I", setup, 0x24C, len(blob))
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + protected


def multiboot_header(flags: int = 0, aout: Optional[Tuple[int, int, int, int, int]] = None,
                     bad_checksum: bool = False) -> bytes:
    """magic, flags, checksum, then (header_addr, load_addr, load_end_addr, bss_end_addr, entry)."""
    if aout is not None:
        flags |= 1 << 16
    checksum = (-(0x1BADB002 + flags)) & 0xFFFFFFFF
    if bad_checksum:
        checksum ^= 1
    header = struct.pack("<III", 0x1BADB002, flags, checksum)
    if aout is not None:
        header += struct.pack("<5I", *aout)
    return header


def lz4_legacy_with_cli(data: bytes) -> Optional[bytes]:
    """Compress with Debian's lz4 tool in legacy format (-l), as the kernel build does."""
    tool = shutil.which("lz4")
    if tool is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in")
        dst = os.path.join(tmp, "out.lz4")
        with open(src, "wb") as handle:
            handle.write(data)
        subprocess.run([tool, "-q", "-l", "-9", "-f", src, dst], check=True, timeout=60)
        with open(dst, "rb") as handle:
            return handle.read()


def compressible_bytes(size: int, seed: int = 1) -> bytes:
    """Text-like data with repeats at many distances, including overlapping short ones."""
    import random

    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij ") for _ in range(rng.randint(1, 12))) for _ in range(64)]
    out = bytearray()
    while len(out) < size:
        choice = rng.random()
        if choice < 0.1:
            out += bytes([rng.randrange(256)]) * rng.randint(1, 300)  # runs: overlapping matches
        elif choice < 0.2 and out:
            start = rng.randrange(len(out))
            out += out[start:start + rng.randint(4, 100)]
        else:
            out += rng.choice(words)
    return bytes(out[:size])

"""Crafted kernel-module ELF files for the guestimage tests."""

from __future__ import annotations

import struct


def craft_module(modinfo: bytes, section_name: bytes = b".modinfo", elf_class: int = 2) -> bytes:
    """A minimal ELF64 relocatable: null section, one data section, and .shstrtab."""
    shstrtab = b"\0" + section_name + b"\0.shstrtab\0"
    data_offset = 64
    strtab_offset = data_offset + len(modinfo)
    shoff = (strtab_offset + len(shstrtab) + 7) & ~7
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    body = header + modinfo + shstrtab
    body += bytes(shoff - len(body))
    sections = [
        struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, data_offset, len(modinfo), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 2 + len(section_name), 3, 0, 0, strtab_offset, len(shstrtab), 0, 0, 1, 0),
    ]
    return body + b"".join(sections)


def module_with_depends(name: str, depends: str) -> bytes:
    return craft_module(f"name={name}\0depends={depends}\0".encode())

"""The boot GDT: flat code and data descriptors at the selectors the Linux boot protocol
names (__BOOT_CS = 0x10, __BOOT_DS = 0x18), also used for multiboot's flat segments.
"""

from __future__ import annotations

import struct

from ..cpu_state import Segment, TableRegister
from ..memory import GuestMemory
from .layout import BOOT_GDT_ADDR, BOOT_IDT_ADDR

BOOT_CS = 0x10
BOOT_DS = 0x18
GDT_ENTRIES = 4


def encode_descriptor(segment: Segment) -> int:
    """The 8-byte descriptor that loads into ``segment``'s hidden cache."""
    limit = segment.limit >> 12 if segment.g else segment.limit
    if limit > 0xFFFFF:
        raise ValueError(f"segment limit {segment.limit:#x} does not fit a descriptor")
    access = (segment.present << 7) | (segment.dpl << 5) | (segment.s << 4) | segment.type
    flags = (segment.g << 3) | (segment.db << 2) | (segment.l << 1)
    base = segment.base
    return (
        (limit & 0xFFFF)
        | ((base & 0xFFFFFF) << 16)
        | (access << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (flags << 52)
        | (((base >> 24) & 0xFF) << 56)
    )


def code_segment(long_mode: bool) -> Segment:
    return Segment.flat64_code(BOOT_CS) if long_mode else Segment.flat32(BOOT_CS, code=True)


def data_segment() -> Segment:
    return Segment.flat32(BOOT_DS, code=False)


def write_boot_gdt(memory: GuestMemory, long_mode: bool) -> TableRegister:
    """Write the boot GDT into guest memory and return the GDTR that points at it."""
    descriptors = [0, 0, encode_descriptor(code_segment(long_mode)), encode_descriptor(data_segment())]
    memory.write(BOOT_GDT_ADDR, struct.pack(f"<{GDT_ENTRIES}Q", *descriptors))
    return TableRegister(base=BOOT_GDT_ADDR, limit=GDT_ENTRIES * 8 - 1)


def write_boot_idt(memory: GuestMemory) -> TableRegister:
    """An empty IDT (limit 0): any exception before the guest sets its own shuts the VM down."""
    memory.write(BOOT_IDT_ADDR, bytes(8))
    return TableRegister(base=BOOT_IDT_ADDR, limit=0)

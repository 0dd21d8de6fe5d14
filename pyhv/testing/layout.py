"""The guest image every differential snippet runs in, identical on KVM and the software CPU.

A 64-bit long-mode machine at CPL 0. The first 2 MiB are identity-mapped with 4 KiB pages
so single pages can be made read-only or absent; every exception vector goes through IST1
to a one-byte ``hlt`` stub, so a fault leaves the snippet's stack untouched and the stopped
RIP names the vector. The exception frame sits at a fixed address below :data:`IST_TOP`.

Physical (= linear) map::

    0x00500  GDT: null, code64 0x08, data 0x10, TSS 0x18 (16 bytes)
    0x01000  PML4, 0x02000 PDPT, 0x03000 PD, 0x04000 PT (0-2 MiB, 4 KiB pages)
    0x05000  IDT, 256 gates
    0x06000  TSS (IST1 = IST_TOP)
    0x07000  handler stubs: vector v at HANDLERS + 16 * v
    0x08000  IST stack page, top 0x09000
    0x10000  snippet code (CODE_SIZE bytes)
    0x1F000  read-only data page
    0x20000  two read/write data pages
    0x22000  not present (guard page)
    0x2E000  stack pages, RSP near STACK_TOP
"""

from __future__ import annotations

import struct
from typing import List, NamedTuple

from ..cpu_state import (CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, EFER_LMA, EFER_LME,
                         EFER_NXE, EFER_SCE, CpuBootState, Segment, TableRegister)
from ..memory import GuestMemory, MiB

RAM_SIZE = 4 * MiB
PAGE = 0x1000
GDT = 0x500
PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000
IDT = 0x5000
TSS = 0x6000
HANDLERS = 0x7000
HANDLER_STRIDE = 16
IST_TOP = 0x9000
CODE = 0x10000
CODE_SIZE = 0x1000
DATA_RO = 0x1F000
DATA = 0x20000
DATA_SIZE = 2 * PAGE
GUARD = 0x22000
STACK_LOW = 0x2E000
STACK_SIZE = 2 * PAGE
STACK_TOP = 0x2F800

CODE_SEL, DATA_SEL, TSS_SEL = 0x08, 0x10, 0x18

# The regions a snippet may change, compared byte for byte after each run.
COMPARED_REGIONS = ((DATA, DATA_SIZE), (STACK_LOW, STACK_SIZE))
# The regions a snippet starts from, refilled before each run.
SEEDED_REGIONS = ((DATA_RO, PAGE), (DATA, DATA_SIZE), (STACK_LOW, STACK_SIZE))

# Exception frame pushed on the IST stack (no privilege change): SS, RSP, RFLAGS, CS, RIP,
# then the error code for the vectors that have one.
FRAME_SS = IST_TOP - 8
FRAME_RSP = IST_TOP - 16
FRAME_RFLAGS = IST_TOP - 24
FRAME_CS = IST_TOP - 32
FRAME_RIP = IST_TOP - 40
FRAME_ERROR = IST_TOP - 48
ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17, 21, 29, 30))

_PTE_P, _PTE_W, _PTE_A, _PTE_D = 1, 2, 0x20, 0x40
TSS_DESCRIPTOR_TYPE = 0xB  # 64-bit TSS, busy


class Page(NamedTuple):
    """A 4 KiB page of the test map: present or not, writable or not."""

    addr: int
    present: bool
    writable: bool


def page_map() -> List[Page]:
    """Every 4 KiB page of the first 2 MiB: present and writable but the guard and read-only pages."""
    pages = []
    for n in range(512):
        addr = n * PAGE
        pages.append(Page(addr, addr != GUARD, addr != DATA_RO))
    return pages


def _descriptor(base: int, limit: int, access: int, flags: int) -> int:
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
            | (((limit >> 16) & 0xF) << 48) | (flags << 52) | (((base >> 24) & 0xFF) << 56))


def handler_address(vector: int) -> int:
    return HANDLERS + HANDLER_STRIDE * vector


def vector_of_stop(rip: int) -> int:
    """The exception vector whose stub stopped at ``rip`` (after its hlt), or -1."""
    offset = rip - 1 - HANDLERS
    if 0 <= offset < 256 * HANDLER_STRIDE and offset % HANDLER_STRIDE == 0:
        return offset // HANDLER_STRIDE
    return -1


def build_image(memory: GuestMemory) -> None:
    """Write page tables, GDT, IDT, TSS and handler stubs (everything but the snippet)."""
    memory.fill(0, 0x10000)
    memory.write_u64(PML4, PDPT | _PTE_P | _PTE_W | _PTE_A)
    memory.write_u64(PDPT, PD | _PTE_P | _PTE_W | _PTE_A)
    memory.write_u64(PD, PT | _PTE_P | _PTE_W | _PTE_A)
    # Accessed and dirty bits are preset so that neither CPU writes to the page tables.
    entries = []
    for page in page_map():
        entry = 0
        if page.present:
            entry = page.addr | _PTE_P | _PTE_A | _PTE_D | (_PTE_W if page.writable else 0)
        entries.append(entry)
    memory.write(PT, struct.pack("<512Q", *entries))
    gdt = [0, _descriptor(0, 0xFFFFF, 0x9B, 0xA), _descriptor(0, 0xFFFFF, 0x93, 0xC),
           _descriptor(TSS, 0x67, 0x80 | TSS_DESCRIPTOR_TYPE, 0), 0]
    memory.write(GDT, struct.pack("<5Q", *gdt))
    memory.write_u64(TSS + 0x24, IST_TOP)  # IST1
    memory.write_u16(TSS + 0x66, 0x68)  # no I/O permission bitmap
    for vector in range(256):
        stub = handler_address(vector)
        low = (stub & 0xFFFF) | (CODE_SEL << 16) | (1 << 32) | (0x8E << 40) | (((stub >> 16) & 0xFFFF) << 48)
        memory.write(IDT + 16 * vector, struct.pack("<QQ", low, stub >> 32))
        memory.write(stub, b"\xf4")


def boot_state() -> CpuBootState:
    """64-bit CPL-0 state with the test map's CR3, GDT and IDT (TR is set by each backend)."""
    data = Segment(selector=DATA_SEL, base=0, limit=0xFFFF_FFFF, type=3, db=1, g=1)
    return CpuBootState(
        rip=CODE, rsp=STACK_TOP, rflags=0x2,
        cr0=CR0_PE | CR0_PG | CR0_ET | CR0_NE | CR0_WP, cr3=PML4, cr4=CR4_PAE,
        efer=EFER_LME | EFER_LMA | EFER_NXE | EFER_SCE,
        cs=Segment.flat64_code(CODE_SEL), ds=data, es=data, ss=data, fs=data, gs=data,
        gdt=TableRegister(GDT, 5 * 8 - 1), idt=TableRegister(IDT, 256 * 16 - 1))


def tss_segment() -> Segment:
    return Segment(selector=TSS_SEL, base=TSS, limit=0x67, type=TSS_DESCRIPTOR_TYPE, s=0)

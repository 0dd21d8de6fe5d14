"""Segment descriptors: reading them from the GDT/LDT and loading segment registers.

Real mode (and a null selector in 64-bit mode) only sets selector and base; protected mode
checks the descriptor as the architecture requires and raises #GP/#NP/#SS with the
selector as error code.
"""

from __future__ import annotations

from .faults import GP, NP, SS_VEC, TS, GuestFault
from .state import CS, SS, SegmentCache, signed64


def descriptor_address(cpu, selector: int, fault_vector: int = GP) -> int:
    """Linear address of the descriptor for ``selector``; faults if outside its table."""
    s = cpu.s
    index = selector & 0xFFF8
    if selector & 4:
        if not s.ldtr.present or index + 7 > s.ldtr.limit:
            raise GuestFault(fault_vector, selector & 0xFFFC)
        return s.ldtr.base + index
    if index + 7 > s.gdtr_limit:
        raise GuestFault(fault_vector, selector & 0xFFFC)
    return s.gdtr_base + index


def read_descriptor(cpu, selector: int, fault_vector: int = GP) -> int:
    return cpu.mmu.read_system(descriptor_address(cpu, selector, fault_vector), 8)


def cache_from_descriptor(selector: int, desc: int, high: int = 0) -> SegmentCache:
    """A segment cache from an 8-byte descriptor (``high``: upper half of a 16-byte one)."""
    limit = (desc & 0xFFFF) | ((desc >> 32) & 0xF_0000)
    base = ((desc >> 16) & 0xFF_FFFF) | ((desc >> 32) & 0xFF00_0000) | ((high & 0xFFFF_FFFF) << 32)
    g = (desc >> 55) & 1
    if g:
        limit = (limit << 12) | 0xFFF
    return SegmentCache(selector=selector, base=signed64(base), limit=limit, type=(desc >> 40) & 0xF,
                        s=(desc >> 44) & 1, dpl=(desc >> 45) & 3, present=(desc >> 47) & 1,
                        db=(desc >> 54) & 1, l=(desc >> 53) & 1, g=g)


def set_accessed(cpu, selector: int, desc: int) -> None:
    if desc & (1 << 40) == 0:
        cpu.mmu.write_system(descriptor_address(cpu, selector) + 5, 1, ((desc >> 40) & 0xFF) | 1)


def load_segment(cpu, seg: int, selector: int) -> None:
    """mov sreg / pop sreg / lds …: load ``seg`` with ``selector`` (not CS)."""
    s = cpu.s
    selector &= 0xFFFF
    if not s.cr0 & 1 or s.rflags & (1 << 17):
        cache = s.segs[seg]
        s.segs[seg] = SegmentCache(selector, selector << 4, cache.limit, cache.type, cache.s,
                                   cache.dpl, cache.present, cache.db, cache.l, cache.g)
        if seg == SS:
            cpu.update_mode()
        return
    rpl = selector & 3
    if selector & 0xFFFC == 0:
        if seg == SS and not (cpu.bits == 64 and s.cpl != 3 and rpl == s.cpl):
            raise GuestFault(GP, 0)
        s.segs[seg] = SegmentCache(selector, 0, 0, 0, 1, rpl if seg == SS else 0, 0)
        if seg == SS:
            cpu.update_mode()
        return
    desc = read_descriptor(cpu, selector)
    cache = cache_from_descriptor(selector, desc)
    code = cache.type & 8
    if not cache.s:
        raise GuestFault(GP, selector & 0xFFFC)
    if seg == SS:
        if code or not cache.type & 2 or rpl != s.cpl or cache.dpl != s.cpl:
            raise GuestFault(GP, selector & 0xFFFC)
        if not cache.present:
            raise GuestFault(SS_VEC, selector & 0xFFFC)
    else:
        if code and not cache.type & 2:
            raise GuestFault(GP, selector & 0xFFFC)  # execute-only code
        conforming_code = code and cache.type & 4
        if not conforming_code and (rpl > cache.dpl or s.cpl > cache.dpl):
            raise GuestFault(GP, selector & 0xFFFC)
        if not cache.present:
            raise GuestFault(NP, selector & 0xFFFC)
    set_accessed(cpu, selector, desc)
    s.segs[seg] = cache
    if seg == SS:
        cpu.update_mode()


def load_code_descriptor(cpu, selector: int, fault_vector: int = GP) -> SegmentCache:
    """Read and check a code-segment descriptor for a far transfer or gate target."""
    if selector & 0xFFFC == 0:
        raise GuestFault(fault_vector, 0)
    desc = read_descriptor(cpu, selector, fault_vector)
    cache = cache_from_descriptor(selector, desc)
    if not cache.s or not cache.type & 8:
        raise GuestFault(fault_vector, selector & 0xFFFC)
    if not cache.present:
        raise GuestFault(NP, selector & 0xFFFC)
    return cache


def set_cs(cpu, cache: SegmentCache, cpl: int) -> None:
    """Install a new CS cache and CPL (far jmp/call/ret, interrupts, iret, syscall)."""
    s = cpu.s
    cache.selector = (cache.selector & 0xFFFC) | cpl
    s.segs[CS] = cache
    s.cpl = cpl
    cpu.mmu.set_user(cpl == 3)
    cpu.update_mode()


def load_tr(cpu, selector: int) -> None:
    s = cpu.s
    if selector & 0xFFFC == 0 or selector & 4:
        raise GuestFault(GP, selector & 0xFFFC)
    addr = descriptor_address(cpu, selector)
    desc = cpu.mmu.read_system(addr, 8)
    high = cpu.mmu.read_system(addr + 8, 8) if s.efer & (1 << 10) else 0
    cache = cache_from_descriptor(selector, desc, high)
    if cache.s or cache.type not in (1, 9):
        raise GuestFault(GP, selector & 0xFFFC)
    if not cache.present:
        raise GuestFault(NP, selector & 0xFFFC)
    cpu.mmu.write_system(addr + 5, 1, ((desc >> 40) & 0xFF) | 2)  # mark busy
    cache.type |= 2
    s.tr = cache


def load_ldt(cpu, selector: int) -> None:
    s = cpu.s
    if selector & 0xFFFC == 0:
        s.ldtr = SegmentCache(selector, 0, 0, 2, 0, 0, 0)
        return
    if selector & 4:
        raise GuestFault(GP, selector & 0xFFFC)
    addr = descriptor_address(cpu, selector)
    desc = cpu.mmu.read_system(addr, 8)
    high = cpu.mmu.read_system(addr + 8, 8) if s.efer & (1 << 10) else 0
    cache = cache_from_descriptor(selector, desc, high)
    if cache.s or cache.type != 2:
        raise GuestFault(GP, selector & 0xFFFC)
    if not cache.present:
        raise GuestFault(NP, selector & 0xFFFC)
    s.ldtr = cache


TSS_FAULT = TS

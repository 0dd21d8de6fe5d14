"""``rep stos`` and ``rep movs`` a page at a time: the kernel's memset and memcpy.

Linux clears and copies memory with ``rep stosq``/``rep movsq`` (and the ``b`` forms for
the tail): tens of megabytes while it boots. The element-at-a-time handlers in
:mod:`.insns.string` cost several Python calls per element; these handlers move the part of
each run that lies in one page of RAM with one slice assignment, and hand everything else
(an element that straddles a page, a page of MMIO or translated code, an overlap where the
forward copy differs from memmove) to the same per-element path, one element at a time.

RCX, RSI and RDI are written back after each chunk, before the next chunk's translation
can fault, so a fault leaves the same restartable state as the per-element handlers. The
CPU installs these handlers in place of the string ones when it decodes a ``rep`` form
(:data:`BULK_HANDLERS`); the direction flag set (a backward copy) goes to the old handler.
"""

from __future__ import annotations

from typing import Callable, Dict

from .decoder import Insn
from .insns import string
from .mmu import ACCESS_READ, ACCESS_WRITE
from .operands import MASK, get_reg, set_reg
from .state import DF, RAX, RCX, RDI, RSI, signed64

M64 = 0xFFFF_FFFF_FFFF_FFFF


def _elements_here(offset: int, linear: int, size: int, adsize: int, count: int) -> int:
    """Whole elements from ``linear`` that stay in its page and before the address wraps."""
    in_page = (0x1000 - (linear & 0xFFF)) // size
    before_wrap = (MASK[adsize] + 1 - offset) // size
    return min(in_page, before_wrap, count)


def _ram_page(mmu, fast: Dict[int, int], linear: int, access: int, nbytes: int):
    """Physical address of ``linear`` when [linear, +nbytes) is plain low RAM for ``access``
    (for a write: no translated code there); None otherwise. May raise the access's fault.

    ``fast`` (the MMU's read or write map) holds a page only after a translation allowed the
    access there, as translated code relies on: a hit needs no walk of the TLB."""
    linear = signed64(linear)
    delta = fast.get(linear >> 12)
    if delta is None:
        mmu.translate(linear, access)
        delta = fast.get(linear >> 12)
        if delta is None:
            return None
    phys = linear + delta
    if phys + nbytes > mmu.low_end:
        return None
    return phys


def rep_stos(cpu, i: Insn) -> None:
    s = cpu.s
    if not i.rep or s.rflags & DF:
        string.stos(cpu, i)
        return
    regs = s.regs
    adsize, size, mmu = i.adsize, i.opsize, cpu.mmu
    base = string.destination_base(cpu, i)
    value = get_reg(regs, RAX, size)
    pattern = value.to_bytes(size, "little")
    count = get_reg(regs, RCX, adsize)
    while count:
        offset = get_reg(regs, RDI, adsize)
        linear = (base + offset) & M64
        n = _elements_here(offset, linear, size, adsize, count)
        phys = _ram_page(mmu, mmu.w, linear, ACCESS_WRITE, n * size) if n else None
        if phys is None:
            n = 1
            mmu.write(linear, size, value)
        else:
            mmu.low[phys:phys + n * size] = pattern * n
        count -= n
        set_reg(regs, RDI, adsize, offset + n * size)
        set_reg(regs, RCX, adsize, count)


def rep_movs(cpu, i: Insn) -> None:
    s = cpu.s
    if not i.rep or s.rflags & DF:
        string.movs(cpu, i)
        return
    regs = s.regs
    adsize, size, mmu = i.adsize, i.opsize, cpu.mmu
    src_base, dst_base = string.source_base(cpu, i), string.destination_base(cpu, i)
    count = get_reg(regs, RCX, adsize)
    while count:
        src_offset = get_reg(regs, RSI, adsize)
        dst_offset = get_reg(regs, RDI, adsize)
        src = (src_base + src_offset) & M64
        dst = (dst_base + dst_offset) & M64
        n = min(_elements_here(src_offset, src, size, adsize, count),
                _elements_here(dst_offset, dst, size, adsize, count))
        nbytes = n * size
        src_phys = dst_phys = None
        if n:
            src_phys = _ram_page(mmu, mmu.r, src, ACCESS_READ, nbytes)
            dst_phys = _ram_page(mmu, mmu.w, dst, ACCESS_WRITE, nbytes)
        # A destination just above the source repeats a pattern element by element, which
        # a block copy (memmove) would not.
        if (src_phys is None or dst_phys is None
                or src_phys < dst_phys < src_phys + nbytes):
            n = 1
            mmu.write(dst, size, mmu.read(src, size))
        else:
            low = mmu.low
            low[dst_phys:dst_phys + nbytes] = low[src_phys:src_phys + nbytes].tobytes()
        count -= n
        set_reg(regs, RSI, adsize, src_offset + n * size)
        set_reg(regs, RDI, adsize, dst_offset + n * size)
        set_reg(regs, RCX, adsize, count)


BULK_HANDLERS: Dict[Callable, Callable[..., None]] = {string.stos: rep_stos, string.movs: rep_movs}

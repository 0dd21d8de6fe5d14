"""Read-modify-write memory operands.

A CPU checks write access before it reads the destination of an RMW instruction (add to
memory, inc, shifts, bts, xchg, cmpxchg, xadd …): a fault on an absent or read-only page
reports W=1 in the #PF error code and leaves registers, flags and memory untouched, even
when the instruction would not change the value (a shift by 0).
"""

from __future__ import annotations

from ..mmu import ACCESS_WRITE


def read_for_update(cpu, linear: int, size: int) -> int:
    mmu = cpu.mmu
    if (linear & 0xFFF) + size > 0x1000:
        mmu.translate(linear, ACCESS_WRITE)
        # CR2 of a fault on the second page is that page's first byte.
        mmu.translate((linear | 0xFFF) + 1, ACCESS_WRITE)
    elif mmu.w.get(linear >> 12) is None:
        mmu.translate(linear, ACCESS_WRITE)
    return mmu.read(linear, size)

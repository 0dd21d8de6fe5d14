"""String instructions: movs, cmps, stos, lods, scas, ins, outs, with rep/repe/repne.

A rep loop runs to completion inside one instruction, but keeps RCX/RSI/RDI current after
each element, so a fault in the middle leaves a restartable state, as on hardware.
"""

from __future__ import annotations

from ..decoder import BYTE, Insn, register
from ..operands import MASK, get_reg, set_reg
from ..state import DF, ES, RAX, RCX, RDI, RDX, RSI
from .alu import CMP, alu
from .system import check_io


def _seg_base(cpu, i: Insn) -> int:
    return cpu.s.segs[i.seg].base if i.seg >= 0 else 0


def _es_base(cpu, i: Insn) -> int:
    return cpu.s.segs[ES].base if i.bits != 64 else 0


def _step(cpu, i: Insn) -> int:
    return -i.opsize if cpu.s.rflags & DF else i.opsize


def _advance(regs: list, reg: int, adsize: int, delta: int) -> None:
    set_reg(regs, reg, adsize, (get_reg(regs, reg, adsize) + delta) & MASK[adsize])


def movs(cpu, i: Insn) -> None:
    s = cpu.s
    regs = s.regs
    a = i.adsize
    size = i.opsize
    delta = _step(cpu, i)
    src_base = _seg_base(cpu, i)
    dst_base = _es_base(cpu, i)
    mmu = cpu.mmu
    if not i.rep:
        mmu.write(dst_base + get_reg(regs, RDI, a), size, mmu.read(src_base + get_reg(regs, RSI, a), size))
        _advance(regs, RSI, a, delta)
        _advance(regs, RDI, a, delta)
        return
    mask = MASK[a]
    while get_reg(regs, RCX, a):
        mmu.write(dst_base + get_reg(regs, RDI, a), size, mmu.read(src_base + get_reg(regs, RSI, a), size))
        _advance(regs, RSI, a, delta)
        _advance(regs, RDI, a, delta)
        set_reg(regs, RCX, a, (get_reg(regs, RCX, a) - 1) & mask)


def stos(cpu, i: Insn) -> None:
    s = cpu.s
    regs = s.regs
    a = i.adsize
    size = i.opsize
    delta = _step(cpu, i)
    base = _es_base(cpu, i)
    value = get_reg(regs, RAX, size)
    mmu = cpu.mmu
    if not i.rep:
        mmu.write(base + get_reg(regs, RDI, a), size, value)
        _advance(regs, RDI, a, delta)
        return
    mask = MASK[a]
    while get_reg(regs, RCX, a):
        mmu.write(base + get_reg(regs, RDI, a), size, value)
        _advance(regs, RDI, a, delta)
        set_reg(regs, RCX, a, (get_reg(regs, RCX, a) - 1) & mask)


def lods(cpu, i: Insn) -> None:
    s = cpu.s
    regs = s.regs
    a = i.adsize
    size = i.opsize
    delta = _step(cpu, i)
    base = _seg_base(cpu, i)
    mask = MASK[a]
    while True:
        if i.rep and not get_reg(regs, RCX, a):
            return
        set_reg(regs, RAX, size, cpu.mmu.read(base + get_reg(regs, RSI, a), size))
        _advance(regs, RSI, a, delta)
        if not i.rep:
            return
        set_reg(regs, RCX, a, (get_reg(regs, RCX, a) - 1) & mask)


def cmps(cpu, i: Insn) -> None:
    s = cpu.s
    regs = s.regs
    a = i.adsize
    size = i.opsize
    delta = _step(cpu, i)
    src_base = _seg_base(cpu, i)
    dst_base = _es_base(cpu, i)
    mask = MASK[a]
    while True:
        if i.rep and not get_reg(regs, RCX, a):
            return
        left = cpu.mmu.read(src_base + get_reg(regs, RSI, a), size)
        right = cpu.mmu.read(dst_base + get_reg(regs, RDI, a), size)
        alu(s, CMP, size, left, right)
        _advance(regs, RSI, a, delta)
        _advance(regs, RDI, a, delta)
        if not i.rep:
            return
        set_reg(regs, RCX, a, (get_reg(regs, RCX, a) - 1) & mask)
        if (left == right) != (i.rep == 0xF3):
            return


def scas(cpu, i: Insn) -> None:
    s = cpu.s
    regs = s.regs
    a = i.adsize
    size = i.opsize
    delta = _step(cpu, i)
    base = _es_base(cpu, i)
    mask = MASK[a]
    acc = get_reg(regs, RAX, size)
    while True:
        if i.rep and not get_reg(regs, RCX, a):
            return
        value = cpu.mmu.read(base + get_reg(regs, RDI, a), size)
        alu(s, CMP, size, acc, value)
        _advance(regs, RDI, a, delta)
        if not i.rep:
            return
        set_reg(regs, RCX, a, (get_reg(regs, RCX, a) - 1) & mask)
        if (acc == value) != (i.rep == 0xF3):
            return


def ins(cpu, i: Insn) -> None:
    s = cpu.s
    regs = s.regs
    a = i.adsize
    size = i.opsize if i.opsize < 8 else 4
    port = regs[RDX] & 0xFFFF
    check_io(cpu, port, size)
    delta = _step(cpu, i)
    base = _es_base(cpu, i)
    mask = MASK[a]
    while True:
        if i.rep and not get_reg(regs, RCX, a):
            return
        addr = base + get_reg(regs, RDI, a)
        cpu.mmu.check_write(addr, size)
        cpu.mmu.write(addr, size, cpu.pio_bus.read(port, size))
        _advance(regs, RDI, a, delta)
        if not i.rep:
            return
        set_reg(regs, RCX, a, (get_reg(regs, RCX, a) - 1) & mask)


def outs(cpu, i: Insn) -> None:
    s = cpu.s
    regs = s.regs
    a = i.adsize
    size = i.opsize if i.opsize < 8 else 4
    port = regs[RDX] & 0xFFFF
    check_io(cpu, port, size)
    delta = _step(cpu, i)
    base = _seg_base(cpu, i)
    mask = MASK[a]
    while True:
        if i.rep and not get_reg(regs, RCX, a):
            break
        cpu.pio_bus.write(port, size, cpu.mmu.read(base + get_reg(regs, RSI, a), size))
        _advance(regs, RSI, a, delta)
        if not i.rep:
            break
        set_reg(regs, RCX, a, (get_reg(regs, RCX, a) - 1) & mask)
    cpu.after_io()


def _register() -> None:
    for op, fn in ((0xA4, movs), (0xA6, cmps), (0xAA, stos), (0xAC, lods), (0xAE, scas),
                   (0x6C, ins), (0x6E, outs)):
        register(op, fn, flags=BYTE)
        register(op + 1, fn)


_register()

"""String instructions: movs, cmps, stos, lods, scas, ins, outs, with rep/repe/repne.

A rep loop runs to completion inside one instruction, but keeps RCX/RSI/RDI current after
each element, so a fault in the middle leaves a restartable state, as on hardware.

Each instruction is an element function, run once or under a prefix by :func:`_repeat`,
the one loop for all of them. An element takes
``(cpu, regs, adsize, size, delta, first, second)``: the element size, the signed step of
RSI/RDI, and two values that stay fixed for the whole instruction (segment bases, the
accumulator, the port), named by each element. Plain module functions rather than closures,
because a closure's cells cost CPython more than the element itself on the un-prefixed path.
"""

from __future__ import annotations

from typing import Callable, Optional

from ..decoder import BYTE, Insn, register
from ..operands import get_reg, set_reg
from ..state import DF, ES, RAX, RCX, RDI, RDX, RSI, signed64
from .alu import CMP, alu
from .system import check_io

REPE = 0xF3

# Returns None, or for cmps/scas whether the compared values were equal: a difference
# ends repe, a match ends repne.
Element = Callable[[object, list, int, int, int, int, int], Optional[bool]]


def source_base(cpu, i: Insn) -> int:
    """Base of the segment RSI addresses: DS or the override. In 64-bit mode only an FS or GS
    override has a base (the decoder leaves ``seg`` negative otherwise)."""
    return cpu.s.segs[i.seg].base if i.seg >= 0 else 0


def destination_base(cpu, i: Insn) -> int:
    """Base of the segment RDI addresses: always ES, which no prefix overrides; 0 in 64-bit mode."""
    return cpu.s.segs[ES].base if i.bits != 64 else 0


def _advance(regs: list, reg: int, adsize: int, delta: int) -> None:
    if adsize == 8:
        regs[reg] = signed64(regs[reg] + delta)
    else:
        set_reg(regs, reg, adsize, get_reg(regs, reg, adsize) + delta)


def _repeat(cpu, i: Insn, size: int, element: Element, first: int, second: int) -> Optional[bool]:
    """Run ``element`` once, or under a rep prefix until RCX (at the address size) is zero,
    counting RCX down after each element."""
    regs = cpu.s.regs
    adsize = i.adsize
    delta = -size if cpu.s.rflags & DF else size
    if not i.rep:
        return element(cpu, regs, adsize, size, delta, first, second)
    repe = i.rep == REPE
    # No element writes RCX, so the count kept here is the register's value.
    count = get_reg(regs, RCX, adsize)
    while count:
        equal = element(cpu, regs, adsize, size, delta, first, second)
        count -= 1
        set_reg(regs, RCX, adsize, count)
        if equal is not None and equal != repe:
            break
    return None


def _copy(cpu, regs: list, a: int, size: int, delta: int, src_base: int, dst_base: int) -> None:
    mmu = cpu.mmu
    mmu.write(dst_base + get_reg(regs, RDI, a), size, mmu.read(src_base + get_reg(regs, RSI, a), size))
    _advance(regs, RSI, a, delta)
    _advance(regs, RDI, a, delta)


def _store(cpu, regs: list, a: int, size: int, delta: int, dst_base: int, value: int) -> None:
    cpu.mmu.write(dst_base + get_reg(regs, RDI, a), size, value)
    _advance(regs, RDI, a, delta)


def _load(cpu, regs: list, a: int, size: int, delta: int, src_base: int, _: int) -> None:
    set_reg(regs, RAX, size, cpu.mmu.read(src_base + get_reg(regs, RSI, a), size))
    _advance(regs, RSI, a, delta)


def _compare(cpu, regs: list, a: int, size: int, delta: int, src_base: int, dst_base: int) -> bool:
    mmu = cpu.mmu
    left = mmu.read(src_base + get_reg(regs, RSI, a), size)
    right = mmu.read(dst_base + get_reg(regs, RDI, a), size)
    alu(cpu.s, CMP, size, left, right)
    _advance(regs, RSI, a, delta)
    _advance(regs, RDI, a, delta)
    return left == right


def _scan(cpu, regs: list, a: int, size: int, delta: int, dst_base: int, acc: int) -> bool:
    value = cpu.mmu.read(dst_base + get_reg(regs, RDI, a), size)
    alu(cpu.s, CMP, size, acc, value)
    _advance(regs, RDI, a, delta)
    return acc == value


def _input(cpu, regs: list, a: int, size: int, delta: int, dst_base: int, port: int) -> None:
    addr = dst_base + get_reg(regs, RDI, a)
    # The destination must be writable before the port is read: a read can have effects.
    cpu.mmu.check_write(addr, size)
    cpu.mmu.write(addr, size, cpu.pio_bus.read(port, size))
    _advance(regs, RDI, a, delta)


def _output(cpu, regs: list, a: int, size: int, delta: int, src_base: int, port: int) -> None:
    cpu.pio_bus.write(port, size, cpu.mmu.read(src_base + get_reg(regs, RSI, a), size))
    _advance(regs, RSI, a, delta)


def movs(cpu, i: Insn) -> None:
    _repeat(cpu, i, i.opsize, _copy, source_base(cpu, i), destination_base(cpu, i))


def stos(cpu, i: Insn) -> None:
    _repeat(cpu, i, i.opsize, _store, destination_base(cpu, i), get_reg(cpu.s.regs, RAX, i.opsize))


def lods(cpu, i: Insn) -> None:
    _repeat(cpu, i, i.opsize, _load, source_base(cpu, i), 0)


def cmps(cpu, i: Insn) -> None:
    _repeat(cpu, i, i.opsize, _compare, source_base(cpu, i), destination_base(cpu, i))


def scas(cpu, i: Insn) -> None:
    _repeat(cpu, i, i.opsize, _scan, destination_base(cpu, i), get_reg(cpu.s.regs, RAX, i.opsize))


def _io_port(cpu, i: Insn) -> int:
    """DX, once IOPL and the I/O bitmap allow an access of :func:`_io_size` there."""
    port = cpu.s.regs[RDX] & 0xFFFF
    check_io(cpu, port, _io_size(i))
    return port


def _io_size(i: Insn) -> int:
    return i.opsize if i.opsize < 8 else 4


def ins(cpu, i: Insn) -> None:
    port = _io_port(cpu, i)
    _repeat(cpu, i, _io_size(i), _input, destination_base(cpu, i), port)


def outs(cpu, i: Insn) -> None:
    port = _io_port(cpu, i)
    _repeat(cpu, i, _io_size(i), _output, source_base(cpu, i), port)
    cpu.after_io()


def _register() -> None:
    for op, fn in ((0xA4, movs), (0xA6, cmps), (0xAA, stos), (0xAC, lods), (0xAE, scas),
                   (0x6C, ins), (0x6E, outs)):
        register(op, fn, flags=BYTE)
        register(op + 1, fn)


_register()

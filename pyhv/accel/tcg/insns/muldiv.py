"""Multiply and divide: mul/imul (one, two and three operands), div/idiv with #DE.

MUL/IMUL set CF=OF when the result does not fit the destination; SF/ZF/PF follow the
low half of the result and AF is cleared (they are architecturally undefined; this is
what current CPUs and QEMU produce for SF/ZF/PF).
"""

from __future__ import annotations

from ..decoder import BYTE, IMM_BS, IMM_Z, Insn, register
from ..faults import DE, GuestFault
from ..flags import set_eager
from ..operands import MASK, get_reg, read_rm, set_reg, sext
from ..state import RAX, RDX


def _store_wide(regs: list, size: int, product: int) -> None:
    if size == 1:
        set_reg(regs, RAX, 2, product & 0xFFFF)
    else:
        set_reg(regs, RAX, size, product & MASK[size])
        set_reg(regs, RDX, size, (product >> (8 * size)) & MASK[size])


def mul(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    product = get_reg(s.regs, RAX, size) * read_rm(cpu, i, size)
    _store_wide(s.regs, size, product)
    high = product >> (8 * size)
    set_eager(s, size, product & MASK[size], high != 0, high != 0)


def imul1(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    product = sext(get_reg(s.regs, RAX, size), size) * sext(read_rm(cpu, i, size), size)
    _store_wide(s.regs, size, product & ((1 << (16 * size)) - 1))
    low = product & MASK[size]
    overflow = sext(low, size) != product
    set_eager(s, size, low, overflow, overflow)


def _imul_to_reg(cpu, i: Insn, a: int, b: int) -> None:
    s = cpu.s
    size = i.opsize
    product = sext(a, size) * sext(b, size)
    low = product & MASK[size]
    set_reg(s.regs, i.reg, size, low)
    overflow = sext(low, size) != product
    set_eager(s, size, low, overflow, overflow)


def imul2(cpu, i: Insn) -> None:
    _imul_to_reg(cpu, i, get_reg(cpu.s.regs, i.reg, i.opsize), read_rm(cpu, i, i.opsize))


def imul3(cpu, i: Insn) -> None:
    _imul_to_reg(cpu, i, read_rm(cpu, i, i.opsize), i.imm)


def div(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    divisor = read_rm(cpu, i, size)
    if divisor == 0:
        raise GuestFault(DE)
    if size == 1:
        dividend = get_reg(s.regs, RAX, 2)
    else:
        dividend = (get_reg(s.regs, RDX, size) << (8 * size)) | get_reg(s.regs, RAX, size)
    quotient, remainder = divmod(dividend, divisor)
    if quotient > MASK[size]:
        raise GuestFault(DE)
    _store_divide(s.regs, size, quotient, remainder)


def idiv(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    divisor = sext(read_rm(cpu, i, size), size)
    if divisor == 0:
        raise GuestFault(DE)
    if size == 1:
        dividend = sext(get_reg(s.regs, RAX, 2), 2)
    else:
        raw = (get_reg(s.regs, RDX, size) << (8 * size)) | get_reg(s.regs, RAX, size)
        width = 16 * size
        dividend = raw - (1 << width) if raw >> (width - 1) else raw
    # x86 truncates toward zero; Python's divmod floors.
    quotient = abs(dividend) // abs(divisor)
    if (dividend < 0) != (divisor < 0):
        quotient = -quotient
    remainder = dividend - quotient * divisor
    limit = 1 << (8 * size - 1)
    if not -limit <= quotient < limit:
        raise GuestFault(DE)
    _store_divide(s.regs, size, quotient & MASK[size], remainder & MASK[size])


def _store_divide(regs: list, size: int, quotient: int, remainder: int) -> None:
    if size == 1:
        set_reg(regs, RAX, 2, (quotient & 0xFF) | ((remainder & 0xFF) << 8))
    else:
        set_reg(regs, RAX, size, quotient)
        set_reg(regs, RDX, size, remainder)


def _register() -> None:
    register(0xF6, mul, flags=BYTE, reg=4)
    register(0xF7, mul, reg=4)
    register(0xF6, imul1, flags=BYTE, reg=5)
    register(0xF7, imul1, reg=5)
    register(0xF6, div, flags=BYTE, reg=6)
    register(0xF7, div, reg=6)
    register(0xF6, idiv, flags=BYTE, reg=7)
    register(0xF7, idiv, reg=7)
    register(0x1AF, imul2, modrm=True)
    register(0x69, imul3, modrm=True, imm=IMM_Z)
    register(0x6B, imul3, modrm=True, imm=IMM_BS)


_register()

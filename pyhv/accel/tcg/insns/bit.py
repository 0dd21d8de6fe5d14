"""Bit operations: bt/bts/btr/btc (register and immediate bit offsets), bsf/bsr, popcnt.

BT* set CF to the selected bit and leave the other flags as they were; BSF/BSR set ZF
and leave the destination unchanged for a zero source (what current CPUs do).
"""

from __future__ import annotations

from ..decoder import IMM_B, LOCKABLE, Insn, register
from ..faults import UD, GuestFault
from ..flags import materialize, set_eager
from ..operands import MASK, ea, get_reg, read_rm, set_reg, sext
from ..state import CF, ZF
from .rmw import read_for_update

BT, BTS, BTR, BTC = range(4)
KIND_BY_OP = {0x1A3: BT, 0x1AB: BTS, 0x1B3: BTR, 0x1BB: BTC}


def _bit_op(cpu, i: Insn, kind: int, offset: int, offset_is_reg: bool) -> None:
    s = cpu.s
    size = i.opsize
    bits = size * 8
    if i.is_mem:
        addr = ea(cpu, i)
        if offset_is_reg:
            # A register bit offset reaches outside the operand, signed.
            signed = sext(offset, size)
            addr += (signed >> (3 + size.bit_length() - 1)) * size
            addr &= MASK[8]
        bit = offset & (bits - 1)
        value = cpu.mmu.read(addr, size) if kind == BT else read_for_update(cpu, addr, size)
    else:
        bit = offset & (bits - 1)
        value = get_reg(s.regs, i.rm, size)
    # 1 or 0 as constants: ``value`` of 2**63 and up is a long on PyPy, and so would be a bit
    # taken from it, and RFLAGS after it (see .state).
    carry = 1 if (value >> bit) & 1 else 0
    materialize(s)
    s.rflags = (s.rflags & ~CF) | carry
    if kind == BT:
        return
    if kind == BTS:
        value |= 1 << bit
    elif kind == BTR:
        value &= ~(1 << bit)
    else:
        value ^= 1 << bit
    if i.is_mem:
        cpu.mmu.write(addr, size, value)
    else:
        set_reg(s.regs, i.rm, size, value)


def bt_reg(cpu, i: Insn) -> None:
    _bit_op(cpu, i, KIND_BY_OP[i.op], get_reg(cpu.s.regs, i.reg, i.opsize), True)


def bt_imm(cpu, i: Insn) -> None:
    _bit_op(cpu, i, i.raw_reg - 4, i.imm, False)


def _bit_scan(cpu, i: Insn, highest: bool) -> None:
    """ZF when the source is 0 (the destination is left as it was); otherwise the index of
    its lowest (bsf) or highest (bsr) set bit."""
    s = cpu.s
    value = read_rm(cpu, i, i.opsize)
    materialize(s)
    if value == 0:
        s.rflags |= ZF
        return
    s.rflags &= ~ZF
    set_reg(s.regs, i.reg, i.opsize, (value if highest else value & -value).bit_length() - 1)


def bsf(cpu, i: Insn) -> None:
    _bit_scan(cpu, i, highest=False)


def bsr(cpu, i: Insn) -> None:
    _bit_scan(cpu, i, highest=True)


def popcnt(cpu, i: Insn) -> None:
    if i.rep != 0xF3:
        raise GuestFault(UD)  # 0F B8 without F3 is jmpe (IA-64 only)
    s = cpu.s
    value = read_rm(cpu, i, i.opsize)
    set_reg(s.regs, i.reg, i.opsize, bin(value).count("1"))
    set_eager(s, 1, 1, 0, 0)
    s.rflags &= ~0x8D5
    if value == 0:
        s.rflags |= ZF


def _register() -> None:
    register(0x1A3, bt_reg, modrm=True)
    register(0x1AB, bt_reg, modrm=True, flags=LOCKABLE)
    register(0x1B3, bt_reg, modrm=True, flags=LOCKABLE)
    register(0x1BB, bt_reg, modrm=True, flags=LOCKABLE)
    register(0x1BA, bt_imm, imm=IMM_B, reg=4)
    for reg in (5, 6, 7):
        register(0x1BA, bt_imm, imm=IMM_B, flags=LOCKABLE, reg=reg)
    register(0x1BC, bsf, modrm=True)
    register(0x1BD, bsr, modrm=True)
    register(0x1B8, popcnt, modrm=True)


_register()

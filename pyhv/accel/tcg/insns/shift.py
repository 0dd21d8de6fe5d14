"""Shifts and rotates: rol/ror/rcl/rcr/shl/shr/sar (by 1, CL, imm8) and shld/shrd.

Flags follow what current x86 CPUs (and QEMU) produce: a masked count of zero changes
nothing; OF is computed with the count-of-one formula for any count; AF is cleared by
shifts; rotates change only CF and OF.
"""

from __future__ import annotations

from ..decoder import BYTE, IMM_B, Insn, register
from ..flags import get_cf, materialize, set_eager
from ..operands import MASK, SIGN, ea, get_reg, set_reg, sext
from ..state import CF, OF, RCX
from .rmw import read_for_update

ROL, ROR, RCL, RCR, SHL, SHR, SAL, SAR = range(8)


def shift(s, kind: int, size: int, value: int, count: int) -> int:
    """Apply shift/rotate ``kind`` to ``value``; ``count`` is already masked to 5/6 bits."""
    if count == 0:
        return value
    bits = size * 8
    mask = MASK[size]
    if kind == SHL or kind == SAL:
        res = (value << count) & mask
        cf = (value >> (bits - count)) & 1 if count <= bits else 0
        set_eager(s, size, res, cf, ((res >> (bits - 1)) & 1) ^ cf)
        return res
    if kind == SHR:
        res = value >> count
        cf = (value >> (count - 1)) & 1
        set_eager(s, size, res, cf, (value >> (bits - 1)) & 1)
        return res
    if kind == SAR:
        signed = sext(value, size)
        res = (signed >> count) & mask
        cf = (signed >> (count - 1)) & 1 if count <= bits else (1 if signed < 0 else 0)
        set_eager(s, size, res, cf, 0)
        return res
    materialize(s)
    if kind == ROL or kind == ROR:
        n = count % bits
        if kind == ROL:
            res = ((value << n) | (value >> (bits - n))) & mask if n else value
            cf = res & 1
            of = ((res >> (bits - 1)) & 1) ^ cf
        else:
            res = ((value >> n) | (value << (bits - n))) & mask if n else value
            cf = (res >> (bits - 1)) & 1
            of = cf ^ ((res >> (bits - 2)) & 1)
    else:
        n = count % (bits + 1)
        if n == 0:
            return value
        carry = get_cf(s)
        wide = value | (carry << bits)  # bits+1 wide rotation through CF
        width = bits + 1
        full = (1 << width) - 1
        if kind == RCL:
            wide = ((wide << n) | (wide >> (width - n))) & full
            res = wide & mask
            cf = wide >> bits
            of = ((res >> (bits - 1)) & 1) ^ cf
        else:
            of = ((value >> (bits - 1)) & 1) ^ carry
            wide = ((wide >> n) | (wide << (width - n))) & full
            res = wide & mask
            cf = wide >> bits
    s.rflags = (s.rflags & ~(CF | OF)) | (CF if cf else 0) | (OF if of else 0)
    return res


def _count(cpu, i: Insn) -> int:
    op = i.op
    if op == 0xD0 or op == 0xD1:
        count = 1
    elif op == 0xD2 or op == 0xD3:
        count = cpu.s.regs[RCX] & 0xFF
    else:
        count = i.imm
    return count & (0x3F if i.opsize == 8 else 0x1F)


def shift_rm(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    count = _count(cpu, i)
    if i.is_mem:
        addr = ea(cpu, i)
        value = read_for_update(cpu, addr, size)
        if count:
            cpu.mmu.write(addr, size, shift(s, i.raw_reg, size, value, count))
    else:
        # A count of 0 still writes the register back: a 32-bit one is zero-extended.
        set_reg(s.regs, i.rm, size, shift(s, i.raw_reg, size, get_reg(s.regs, i.rm, size), count))


def shld_shrd(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    bits = size * 8
    mask = MASK[size]
    count = (s.regs[RCX] if i.op in (0x1A5, 0x1AD) else i.imm) & (0x3F if size == 8 else 0x1F)
    addr = ea(cpu, i) if i.is_mem else 0
    dest = read_for_update(cpu, addr, size) if i.is_mem else get_reg(s.regs, i.rm, size)
    if count == 0:
        if not i.is_mem:
            set_reg(s.regs, i.rm, size, dest)  # zero-extends a 32-bit register
        return
    src = get_reg(s.regs, i.reg, size)
    if i.op in (0x1A4, 0x1A5):  # shld
        wide = (dest << bits) | src
        shifted = wide << count
        res = (shifted >> bits) & mask
        cf = (dest >> (bits - count)) & 1 if count <= bits else (src >> (2 * bits - count)) & 1
    else:  # shrd
        wide = (src << bits) | dest
        res = (wide >> count) & mask
        cf = (wide >> (count - 1)) & 1
    of = ((res ^ dest) >> (bits - 1)) & 1
    set_eager(s, size, res, cf, of)
    if i.is_mem:
        cpu.mmu.write(addr, size, res)
    else:
        set_reg(s.regs, i.rm, size, res)


def _register() -> None:
    for kind in range(8):
        register(0xC0, shift_rm, imm=IMM_B, flags=BYTE, reg=kind)
        register(0xC1, shift_rm, imm=IMM_B, reg=kind)
        register(0xD0, shift_rm, flags=BYTE, reg=kind)
        register(0xD1, shift_rm, reg=kind)
        register(0xD2, shift_rm, flags=BYTE, reg=kind)
        register(0xD3, shift_rm, reg=kind)
    register(0x1A4, shld_shrd, modrm=True, imm=IMM_B)
    register(0x1A5, shld_shrd, modrm=True)
    register(0x1AC, shld_shrd, modrm=True, imm=IMM_B)
    register(0x1AD, shld_shrd, modrm=True)


SIGN_BITS = SIGN
_register()

"""Integer ALU: add/or/adc/sbb/and/sub/xor/cmp, inc/dec, neg/not, test."""

from __future__ import annotations

from ..decoder import BYTE, IMM_BS, IMM_B, IMM_Z, LOCKABLE, REG_OP, I64, Insn, register
from ..flags import CC_ADC, CC_ADD, CC_DEC, CC_INC, CC_LOGIC, CC_SBB, CC_SUB, get_cf
from ..operands import MASK, ea, get_reg, set_reg
from ..state import RAX, WRAP64, signed64
from .rmw import read_for_update

ADD, OR, ADC, SBB, AND, SUB, XOR, CMP = range(8)


def alu(s, kind: int, size: int, a: int, b: int) -> int:
    """Compute ``a kind b`` at ``size`` bytes, record lazy flags, return the result.

    At 8 bytes the operands may be unsigned or in the registers' signed form (see .state)
    and the result is in the signed form, as the translated blocks compute it (the flag
    code reads either): register-form operands then stay machine integers on PyPy."""
    if kind == ADD:
        r = a + b
        op = CC_ADD
    elif kind == SUB or kind == CMP:
        r = a - b
        op = CC_SUB
    elif kind == AND:
        r = a & b
        op = CC_LOGIC
    elif kind == OR:
        r = a | b
        op = CC_LOGIC
    elif kind == XOR:
        r = a ^ b
        op = CC_LOGIC
    elif kind == ADC:
        carry = get_cf(s)
        r = a + b + carry
        s.cc_cf = carry
        op = CC_ADC
    else:
        carry = get_cf(s)
        r = a - b - carry
        s.cc_cf = carry
        op = CC_SBB
    r = signed64(r) if size == 8 else r & MASK[size]
    s.cc_op = op
    s.cc_size = size
    s.cc_a = a
    s.cc_b = b
    s.cc_res = r
    return r


def _rm_dest(cpu, i: Insn, kind: int, src: int) -> None:
    size = i.opsize
    s = cpu.s
    if i.is_mem:
        addr = ea(cpu, i)
        if kind == CMP:
            alu(s, kind, size, cpu.mmu.read(addr, size), src)
        else:
            cpu.mmu.write(addr, size, alu(s, kind, size, read_for_update(cpu, addr, size), src))
    else:
        r = alu(s, kind, size, get_reg(s.regs, i.rm, size), src)
        if kind != CMP:
            set_reg(s.regs, i.rm, size, r)


def alu_rm_r(cpu, i: Insn) -> None:
    kind = (i.op >> 3) & 7
    if i.opsize == 8 and not i.is_mem:
        regs = cpu.s.regs
        r = alu(cpu.s, kind, 8, regs[i.rm], regs[i.reg])
        if kind != CMP:
            regs[i.rm] = r
        return
    _rm_dest(cpu, i, kind, get_reg(cpu.s.regs, i.reg, i.opsize))


def alu_r_rm(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    if size == 8:
        regs = s.regs
        kind = (i.op >> 3) & 7
        r = alu(s, kind, 8, regs[i.reg], cpu.mmu.read_q(ea(cpu, i)) if i.is_mem else regs[i.rm])
        if kind != CMP:
            regs[i.reg] = r
        return
    src = cpu.mmu.read(ea(cpu, i), size) if i.is_mem else get_reg(s.regs, i.rm, size)
    kind = (i.op >> 3) & 7
    r = alu(s, kind, size, get_reg(s.regs, i.reg, size), src)
    if kind != CMP:
        set_reg(s.regs, i.reg, size, r)


def alu_acc_imm(cpu, i: Insn) -> None:
    s = cpu.s
    kind = (i.op >> 3) & 7
    r = alu(s, kind, i.opsize, get_reg(s.regs, RAX, i.opsize), i.imm)
    if kind != CMP:
        set_reg(s.regs, RAX, i.opsize, r)


def alu_rm_imm(cpu, i: Insn) -> None:
    if i.opsize == 8 and not i.is_mem:
        imm = i.imm  # sign-extended by the decoder, unsigned: back to the register form
        regs = cpu.s.regs
        r = alu(cpu.s, i.raw_reg, 8, regs[i.rm], imm - WRAP64 if imm >> 63 else imm)
        if i.raw_reg != CMP:
            regs[i.rm] = r
        return
    _rm_dest(cpu, i, i.raw_reg, i.imm)


def _incdec(s, size: int, a: int, inc: bool) -> int:
    s.cc_cf = get_cf(s)
    mask = MASK[size]
    if inc:
        r = (a + 1) & mask
        s.cc_op = CC_INC
    else:
        r = (a - 1) & mask
        s.cc_op = CC_DEC
    s.cc_size = size
    s.cc_a = a
    s.cc_b = 1
    s.cc_res = r
    return r


def inc_rm(cpu, i: Insn) -> None:
    _unary(cpu, i, lambda s, size, a: _incdec(s, size, a, True))


def dec_rm(cpu, i: Insn) -> None:
    _unary(cpu, i, lambda s, size, a: _incdec(s, size, a, False))


def inc_dec_reg(cpu, i: Insn) -> None:
    """40-4F outside 64-bit mode (there they are REX prefixes)."""
    s = cpu.s
    size = i.opsize
    r = _incdec(s, size, get_reg(s.regs, i.reg, size), i.op < 0x48)
    set_reg(s.regs, i.reg, size, r)


def _neg(s, size: int, a: int) -> int:
    return alu(s, SUB, size, 0, a)


def _not(s, size: int, a: int) -> int:
    return ~a & MASK[size]


def neg_rm(cpu, i: Insn) -> None:
    _unary(cpu, i, _neg)


def not_rm(cpu, i: Insn) -> None:
    _unary(cpu, i, _not)


def _unary(cpu, i: Insn, fn) -> None:
    s = cpu.s
    size = i.opsize
    if i.is_mem:
        addr = ea(cpu, i)
        cpu.mmu.write(addr, size, fn(s, size, read_for_update(cpu, addr, size)))
    else:
        set_reg(s.regs, i.rm, size, fn(s, size, get_reg(s.regs, i.rm, size)))


def test_rm_r(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    a = cpu.mmu.read(ea(cpu, i), size) if i.is_mem else get_reg(s.regs, i.rm, size)
    alu(s, AND, size, a, get_reg(s.regs, i.reg, size))


def test_rm_imm(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    a = cpu.mmu.read(ea(cpu, i), size) if i.is_mem else get_reg(s.regs, i.rm, size)
    alu(s, AND, size, a, i.imm)


def test_acc_imm(cpu, i: Insn) -> None:
    s = cpu.s
    alu(s, AND, i.opsize, get_reg(s.regs, RAX, i.opsize), i.imm)


def _register() -> None:
    for kind in range(8):
        base = kind << 3
        lock = LOCKABLE if kind != CMP else 0
        register(base + 0, alu_rm_r, modrm=True, flags=BYTE | lock)
        register(base + 1, alu_rm_r, modrm=True, flags=lock)
        register(base + 2, alu_r_rm, modrm=True, flags=BYTE)
        register(base + 3, alu_r_rm, modrm=True)
        register(base + 4, alu_acc_imm, imm=IMM_B, flags=BYTE)
        register(base + 5, alu_acc_imm, imm=IMM_Z)
        register(0x80, alu_rm_imm, imm=IMM_B, flags=BYTE | lock, reg=kind)
        register(0x81, alu_rm_imm, imm=IMM_Z, flags=lock, reg=kind)
        register(0x82, alu_rm_imm, imm=IMM_B, flags=BYTE | lock | I64, reg=kind)
        register(0x83, alu_rm_imm, imm=IMM_BS, flags=lock, reg=kind)
    for r in range(16):
        register(0x40 + r, inc_dec_reg, flags=REG_OP | I64)
    register(0xFE, inc_rm, flags=BYTE | LOCKABLE, reg=0)
    register(0xFE, dec_rm, flags=BYTE | LOCKABLE, reg=1)
    register(0xFF, inc_rm, flags=LOCKABLE, reg=0)
    register(0xFF, dec_rm, flags=LOCKABLE, reg=1)
    register(0xF6, test_rm_imm, imm=IMM_B, flags=BYTE, reg=0)
    register(0xF6, test_rm_imm, imm=IMM_B, flags=BYTE, reg=1)
    register(0xF7, test_rm_imm, imm=IMM_Z, reg=0)
    register(0xF7, test_rm_imm, imm=IMM_Z, reg=1)
    register(0xF6, not_rm, flags=BYTE | LOCKABLE, reg=2)
    register(0xF7, not_rm, flags=LOCKABLE, reg=2)
    register(0xF6, neg_rm, flags=BYTE | LOCKABLE, reg=3)
    register(0xF7, neg_rm, flags=LOCKABLE, reg=3)
    register(0x84, test_rm_r, modrm=True, flags=BYTE)
    register(0x85, test_rm_r, modrm=True)
    register(0xA8, test_acc_imm, imm=IMM_B, flags=BYTE)
    register(0xA9, test_acc_imm, imm=IMM_Z)


_register()

"""Stack: push/pop of registers, immediates, memory, flags and segment registers;
pusha/popa, enter/leave."""

from __future__ import annotations

from ..decoder import D64, END, I64, IMM_BS, IMM_W_B, IMM_Z, REG_OP, Insn, register
from ..faults import GP, GuestFault
from ..flags import read_rflags, write_rflags
from ..operands import STACK_MASK_64, ea, get_reg, pop, pop_q, push, set_reg, set_stack_pointer
from ..segments import load_segment
from ..state import AC, DF, ID, IF, IOPL, NT, RBP, RSP, SS, TF, VIF, VIP, VM
from ..state import AF, CF, OF, PF, SF, ZF

_SEG_PUSH = {0x06: 0, 0x0E: 1, 0x16: 2, 0x1E: 3, 0x1A0: 4, 0x1A8: 5}
_SEG_POP = {0x07: 0, 0x17: 2, 0x1F: 3, 0x1A1: 4, 0x1A9: 5}


def push_reg(cpu, i: Insn) -> None:
    # 64-bit registers go as they are, in the register form (no long integers on PyPy).
    regs = cpu.s.regs
    push(cpu, i.opsize, regs[i.reg] if i.opsize == 8 else get_reg(regs, i.reg, i.opsize))


def pop_reg(cpu, i: Insn) -> None:
    if i.opsize == 8:
        value = pop_q(cpu)
        cpu.s.regs[i.reg] = value
        return
    value = pop(cpu, i.opsize)
    set_reg(cpu.s.regs, i.reg, i.opsize, value)


def push_imm(cpu, i: Insn) -> None:
    push(cpu, i.opsize, i.imm)


def push_rm(cpu, i: Insn) -> None:
    value = cpu.mmu.read(ea(cpu, i), i.opsize) if i.is_mem else get_reg(cpu.s.regs, i.rm, i.opsize)
    push(cpu, i.opsize, value)


def pop_rm(cpu, i: Insn) -> None:
    s = cpu.s
    old_rsp = s.regs[RSP]
    value = pop(cpu, i.opsize)
    if i.is_mem:
        # The address is computed with the incremented RSP; restore RSP if the store faults.
        try:
            cpu.mmu.write(ea(cpu, i), i.opsize, value)
        except GuestFault:
            s.regs[RSP] = old_rsp
            raise
    else:
        set_reg(s.regs, i.rm, i.opsize, value)


def push_sreg(cpu, i: Insn) -> None:
    push(cpu, i.opsize, cpu.s.segs[_SEG_PUSH[i.op]].selector)


def pop_sreg(cpu, i: Insn) -> None:
    s = cpu.s
    old_rsp = s.regs[RSP]
    selector = pop(cpu, i.opsize) & 0xFFFF
    seg = _SEG_POP[i.op]
    try:
        load_segment(cpu, seg, selector)
    except GuestFault:
        s.regs[RSP] = old_rsp
        raise
    if seg == SS:
        cpu.inhibit_irq = True
    cpu.break_block = True


def pushf(cpu, i: Insn) -> None:
    s = cpu.s
    if s.rflags & VM and (s.rflags & IOPL) != IOPL:
        raise GuestFault(GP, 0)
    push(cpu, i.opsize, read_rflags(s) & ~(VM | (1 << 16)))


def popf(cpu, i: Insn) -> None:
    s = cpu.s
    value = pop(cpu, i.opsize)
    current = read_rflags(s)
    changeable = CF | PF | AF | ZF | SF | TF | DF | OF | NT | AC | ID
    iopl = (current & IOPL) >> 12
    if not s.cr0 & 1 or s.cpl == 0:
        changeable |= IOPL | IF
    elif s.cpl <= iopl:
        changeable |= IF
    if i.opsize == 2:
        changeable &= 0xFFFF
    write_rflags(s, (current & ~changeable) | (value & changeable) & ~(VIF | VIP | VM) | (current & (VIF | VIP | VM)))
    cpu.break_block = True  # IF may have changed: look for interrupts


def pusha(cpu, i: Insn) -> None:
    regs = cpu.s.regs
    size = i.opsize
    sp = get_reg(regs, RSP, size)
    for r in range(8):
        push(cpu, size, sp if r == RSP else get_reg(regs, r, size))


def popa(cpu, i: Insn) -> None:
    regs = cpu.s.regs
    size = i.opsize
    for r in reversed(range(8)):
        value = pop(cpu, size)
        if r != RSP:
            set_reg(regs, r, size, value)


def leave(cpu, i: Insn) -> None:
    s = cpu.s
    smask = cpu.stack_mask
    set_stack_pointer(s, smask, s.regs[RBP] & smask)
    set_reg(s.regs, RBP, i.opsize, pop(cpu, i.opsize))


def enter(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    level = i.imm2 & 31
    push(cpu, size, get_reg(s.regs, RBP, size))
    frame = s.regs[RSP] & cpu.stack_mask
    if level:
        bp = s.regs[RBP]
        for _ in range(1, level):
            bp = (bp - size) & cpu.stack_mask
            base = s.segs[SS].base if cpu.stack_mask != STACK_MASK_64 else 0
            push(cpu, size, cpu.mmu.read(base + bp, size))
        push(cpu, size, frame)
    set_reg(s.regs, RBP, size, frame)
    smask = cpu.stack_mask
    set_stack_pointer(s, smask, (s.regs[RSP] - i.imm) & smask)


def _register() -> None:
    for r in range(8):
        register(0x50 + r, push_reg, flags=REG_OP | D64)
        register(0x58 + r, pop_reg, flags=REG_OP | D64)
    register(0x68, push_imm, imm=IMM_Z, flags=D64)
    register(0x6A, push_imm, imm=IMM_BS, flags=D64)
    register(0xFF, push_rm, flags=D64, reg=6)
    register(0x8F, pop_rm, flags=D64, reg=0)
    for op in _SEG_PUSH:
        register(op, push_sreg, flags=D64 | (I64 if op < 0x100 else 0))
    for op in _SEG_POP:
        register(op, pop_sreg, flags=D64 | END | (I64 if op < 0x100 else 0))
    register(0x9C, pushf, flags=D64)
    register(0x9D, popf, flags=D64 | END)
    register(0x60, pusha, flags=I64)
    register(0x61, popa, flags=I64)
    register(0xC9, leave, flags=D64)
    register(0xC8, enter, imm=IMM_W_B, flags=D64)


_register()

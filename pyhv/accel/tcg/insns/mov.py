"""Data movement: mov, lea, movzx/movsx/movsxd, xchg, cmpxchg, xadd, setcc, cmovcc,
cbw/cwd families, bswap, xlat, mov to/from segment registers."""

from __future__ import annotations

from ..decoder import (BYTE, END, I64, IMM_B, IMM_MOFFS, IMM_V, IMM_Z, LOCKABLE, MEM_ONLY,
                       REG_OP, RM16, RM8, Insn, register)
from ..faults import GP, UD, GuestFault
from ..flags import condition
from ..operands import MASK, ea, ea_offset, get_reg, read_rm, set_reg, sext, write_rm
from ..segments import load_segment
from ..state import CS, RAX, RBX, RDX, SS
from .alu import CMP, alu
from .rmw import read_for_update


def mov_rm_r(cpu, i: Insn) -> None:
    regs = cpu.s.regs
    if i.opsize != 8:
        write_rm(cpu, i, i.opsize, get_reg(regs, i.reg, i.opsize))
    elif i.is_mem:  # 64-bit moves keep the register form: no long integers on PyPy
        cpu.mmu.write(ea(cpu, i), 8, regs[i.reg])
    else:
        regs[i.rm] = regs[i.reg]


def mov_r_rm(cpu, i: Insn) -> None:
    regs = cpu.s.regs
    if i.opsize != 8:
        set_reg(regs, i.reg, i.opsize, read_rm(cpu, i, i.opsize))
    elif i.is_mem:
        regs[i.reg] = cpu.mmu.read_q(ea(cpu, i))
    else:
        regs[i.reg] = regs[i.rm]


def mov_rm_imm(cpu, i: Insn) -> None:
    write_rm(cpu, i, i.opsize, i.imm)


def mov_reg_imm(cpu, i: Insn) -> None:
    set_reg(cpu.s.regs, i.reg, i.opsize, i.imm)


def mov_acc_moffs(cpu, i: Insn) -> None:
    set_reg(cpu.s.regs, RAX, i.opsize, cpu.mmu.read(ea(cpu, i), i.opsize))


def mov_moffs_acc(cpu, i: Insn) -> None:
    cpu.mmu.write(ea(cpu, i), i.opsize, get_reg(cpu.s.regs, RAX, i.opsize))


def lea(cpu, i: Insn) -> None:
    set_reg(cpu.s.regs, i.reg, i.opsize, ea_offset(cpu, i))


def movzx8(cpu, i: Insn) -> None:
    set_reg(cpu.s.regs, i.reg, i.opsize, read_rm(cpu, i, 1))


def movzx16(cpu, i: Insn) -> None:
    set_reg(cpu.s.regs, i.reg, i.opsize, read_rm(cpu, i, 2))


def movsx8(cpu, i: Insn) -> None:
    set_reg(cpu.s.regs, i.reg, i.opsize, sext(read_rm(cpu, i, 1), 1) & MASK[i.opsize])


def movsx16(cpu, i: Insn) -> None:
    set_reg(cpu.s.regs, i.reg, i.opsize, sext(read_rm(cpu, i, 2), 2) & MASK[i.opsize])


def movsxd(cpu, i: Insn) -> None:
    if i.bits != 64:
        raise GuestFault(UD)  # arpl, which no supported guest uses
    value = read_rm(cpu, i, 4)
    if i.opsize == 8:
        value = sext(value, 4)
    set_reg(cpu.s.regs, i.reg, i.opsize, value & MASK[i.opsize])


def xchg_rm_r(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    if i.is_mem:
        addr = ea(cpu, i)
        old = read_for_update(cpu, addr, size)
        cpu.mmu.write(addr, size, get_reg(s.regs, i.reg, size))
    else:
        old = get_reg(s.regs, i.rm, size)
        set_reg(s.regs, i.rm, size, get_reg(s.regs, i.reg, size))
    set_reg(s.regs, i.reg, size, old)


def xchg_acc_reg(cpu, i: Insn) -> None:
    regs = cpu.s.regs
    size = i.opsize
    if i.reg == RAX:
        return  # 90 is nop (and pause), even with a 32-bit operand
    old = get_reg(regs, i.reg, size)
    set_reg(regs, i.reg, size, get_reg(regs, RAX, size))
    set_reg(regs, RAX, size, old)


def nop(cpu, i: Insn) -> None:
    pass


def cmpxchg(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    addr = ea(cpu, i) if i.is_mem else 0
    dest = read_for_update(cpu, addr, size) if i.is_mem else get_reg(s.regs, i.rm, size)
    acc = get_reg(s.regs, RAX, size)
    alu(s, CMP, size, acc, dest)
    if acc == dest:
        write_rm_at(cpu, i, addr, size, get_reg(s.regs, i.reg, size))
    else:
        # The destination is always written (the locked cycle), which also zero-extends a
        # 32-bit register destination.
        write_rm_at(cpu, i, addr, size, dest)
        set_reg(s.regs, RAX, size, dest)


def write_rm_at(cpu, i: Insn, addr: int, size: int, value: int) -> None:
    if i.is_mem:
        cpu.mmu.write(addr, size, value)
    else:
        set_reg(cpu.s.regs, i.rm, size, value)


def xadd(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    addr = ea(cpu, i) if i.is_mem else 0
    dest = read_for_update(cpu, addr, size) if i.is_mem else get_reg(s.regs, i.rm, size)
    src = get_reg(s.regs, i.reg, size)
    total = alu(s, 0, size, dest, src)
    set_reg(s.regs, i.reg, size, dest)
    write_rm_at(cpu, i, addr, size, total)


def cmpxchg8b16b(cpu, i: Insn) -> None:
    s = cpu.s
    regs = s.regs
    half = 8 if i.opsize == 8 else 4
    addr = ea(cpu, i)
    if half == 8 and addr & 0xF:
        raise GuestFault(GP, 0)
    mask = MASK[half]
    old = cpu.mmu.read(addr, half) | (cpu.mmu.read(addr + half, half) << (8 * half))
    expected = (regs[RAX] & mask) | ((regs[RDX] & mask) << (8 * half))
    from ..flags import materialize
    from ..state import ZF
    materialize(s)
    if old == expected:
        cpu.mmu.check_write(addr, 2 * half)
        cpu.mmu.write(addr, half, regs[RBX] & mask)
        cpu.mmu.write(addr + half, half, regs[1] & mask)
        s.rflags |= ZF
    else:
        cpu.mmu.check_write(addr, 2 * half)
        cpu.mmu.write(addr, half, old & mask)
        cpu.mmu.write(addr + half, half, old >> (8 * half))
        s.rflags &= ~ZF
        set_reg(regs, RAX, half, old & mask)
        set_reg(regs, RDX, half, old >> (8 * half))


def setcc(cpu, i: Insn) -> None:
    write_rm(cpu, i, 1, 1 if condition(cpu.s, i.op & 0xF) else 0)


def cmovcc(cpu, i: Insn) -> None:
    value = read_rm(cpu, i, i.opsize)  # the source is read (and may fault) either way
    regs = cpu.s.regs
    if condition(cpu.s, i.op & 0xF):
        set_reg(regs, i.reg, i.opsize, value)
    elif i.opsize == 4:
        regs[i.reg] &= 0xFFFF_FFFF


def cbw(cpu, i: Insn) -> None:
    regs = cpu.s.regs
    half = i.opsize // 2
    set_reg(regs, RAX, i.opsize, sext(get_reg(regs, RAX, half), half) & MASK[i.opsize])


def cwd(cpu, i: Insn) -> None:
    regs = cpu.s.regs
    size = i.opsize
    negative = get_reg(regs, RAX, size) >> (8 * size - 1)
    set_reg(regs, RDX, size, MASK[size] if negative else 0)


def bswap(cpu, i: Insn) -> None:
    regs = cpu.s.regs
    size = i.opsize
    if size == 2:
        set_reg(regs, i.reg, 2, 0)  # undefined; what current CPUs do
        return
    value = get_reg(regs, i.reg, size)
    set_reg(regs, i.reg, size, int.from_bytes(value.to_bytes(size, "little"), "big"))


def xlat(cpu, i: Insn) -> None:
    s = cpu.s
    offset = (get_reg(s.regs, RBX, i.adsize) + (s.regs[RAX] & 0xFF)) & MASK[i.adsize]
    base = s.segs[i.seg].base if i.seg >= 0 else 0
    set_reg(s.regs, RAX, 1, cpu.mmu.read(base + offset, 1))


def mov_rm_sreg(cpu, i: Insn) -> None:
    if i.raw_reg > 5:
        raise GuestFault(UD)
    selector = cpu.s.segs[i.raw_reg].selector
    write_rm(cpu, i, 2 if i.is_mem else i.opsize, selector)


def mov_sreg_rm(cpu, i: Insn) -> None:
    seg = i.raw_reg
    if seg == CS or seg > 5:
        raise GuestFault(UD)
    load_segment(cpu, seg, read_rm(cpu, i, 2))
    if seg == SS:
        cpu.inhibit_irq = True  # mov ss shadows interrupts for one instruction
    cpu.break_block = True


def load_far_pointer(cpu, i: Insn) -> None:
    """lds/les/lss/lfs/lgs: offset then selector from memory."""
    seg = {0xC4: 0, 0xC5: 3, 0x1B2: SS, 0x1B4: 4, 0x1B5: 5}[i.op]
    addr = ea(cpu, i)
    offset = cpu.mmu.read(addr, i.opsize)
    selector = cpu.mmu.read(addr + i.opsize, 2)
    load_segment(cpu, seg, selector)
    set_reg(cpu.s.regs, i.reg, i.opsize, offset)


def _register() -> None:
    register(0x88, mov_rm_r, modrm=True, flags=BYTE)
    register(0x89, mov_rm_r, modrm=True)
    register(0x8A, mov_r_rm, modrm=True, flags=BYTE)
    register(0x8B, mov_r_rm, modrm=True)
    register(0xC6, mov_rm_imm, imm=IMM_B, flags=BYTE, reg=0)
    register(0xC7, mov_rm_imm, imm=IMM_Z, reg=0)
    for r in range(8):
        register(0xB0 + r, mov_reg_imm, imm=IMM_B, flags=BYTE | REG_OP)
        register(0xB8 + r, mov_reg_imm, imm=IMM_V, flags=REG_OP)
        register(0x90 + r, xchg_acc_reg, flags=REG_OP)
        register(0x1C8 + r, bswap, flags=REG_OP)
    register(0xA0, mov_acc_moffs, imm=IMM_MOFFS, flags=BYTE)
    register(0xA1, mov_acc_moffs, imm=IMM_MOFFS)
    register(0xA2, mov_moffs_acc, imm=IMM_MOFFS, flags=BYTE)
    register(0xA3, mov_moffs_acc, imm=IMM_MOFFS)
    register(0x8D, lea, modrm=True, flags=MEM_ONLY)
    register(0x1B6, movzx8, modrm=True, flags=RM8)
    register(0x1B7, movzx16, modrm=True, flags=RM16)
    register(0x1BE, movsx8, modrm=True, flags=RM8)
    register(0x1BF, movsx16, modrm=True, flags=RM16)
    register(0x63, movsxd, modrm=True)
    register(0x86, xchg_rm_r, modrm=True, flags=BYTE | LOCKABLE)
    register(0x87, xchg_rm_r, modrm=True, flags=LOCKABLE)
    register(0x1B0, cmpxchg, modrm=True, flags=BYTE | LOCKABLE)
    register(0x1B1, cmpxchg, modrm=True, flags=LOCKABLE)
    register(0x1C0, xadd, modrm=True, flags=BYTE | LOCKABLE)
    register(0x1C1, xadd, modrm=True, flags=LOCKABLE)
    register(0x1C7, cmpxchg8b16b, flags=MEM_ONLY | LOCKABLE, reg=1)
    for cc in range(16):
        register(0x190 + cc, setcc, modrm=True, flags=BYTE)
        register(0x140 + cc, cmovcc, modrm=True)
    register(0x98, cbw)
    register(0x99, cwd)
    register(0xD7, xlat)
    register(0x8C, mov_rm_sreg, modrm=True)
    register(0x8E, mov_sreg_rm, modrm=True, flags=END)
    register(0xC4, load_far_pointer, modrm=True, flags=I64 | MEM_ONLY | END)
    register(0xC5, load_far_pointer, modrm=True, flags=I64 | MEM_ONLY | END)
    for op in (0x1B2, 0x1B4, 0x1B5):
        register(op, load_far_pointer, modrm=True, flags=MEM_ONLY | END)


_register()

"""Operand access shared by every instruction family: registers, effective addresses, stack.

Byte registers 16-19 are AH, CH, DH, BH (the decoder maps them when no REX prefix is
present). A 32-bit register write zero-extends to 64 bits; 8- and 16-bit writes keep the
rest of the register, as the architecture says.

``CpuState.regs`` holds signed 64-bit values (see :mod:`.state`); these accessors are where
the interpreter's handlers, which compute on unsigned values, cross into that form.
"""

from __future__ import annotations

from .decoder import Insn
from .state import RSP, SS, WRAP64, signed64

MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
SIGN = {1: 0x80, 2: 0x8000, 4: 0x8000_0000, 8: 0x8000_0000_0000_0000}
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
# Cpu.stack_mask of a 64-bit stack: all ones as a machine word. ANDing with it changes
# nothing, so RSP stays in the register form, and comparing with it is a word comparison
# (MASK64 is a long integer on PyPy: comparing with it was a call at every push and pop).
STACK_MASK_64 = -1


def sext(value: int, size: int) -> int:
    """Two's-complement value of a ``size``-byte integer."""
    if size == 8:
        return signed64(value)  # SIGN[8] is a long integer on PyPy: no arithmetic with it
    sign = SIGN[size]
    return (value & (sign - 1)) - (value & sign)


def get_reg(regs: list, r: int, size: int) -> int:
    if size == 8:
        value = regs[r]
        return value + WRAP64 if value < 0 else value  # state.unsigned64, without the call
    if size == 4:
        return regs[r] & 0xFFFF_FFFF
    if size == 2:
        return regs[r] & 0xFFFF
    if r >= 16:
        return (regs[r - 16] >> 8) & 0xFF
    return regs[r] & 0xFF


def set_reg(regs: list, r: int, size: int, value: int) -> None:
    # The merge masks are negative (~0xFFFF, not 0xFFFF_FFFF_FFFF_0000) so that they keep
    # the register's signed form.
    if size == 8:
        regs[r] = signed64(value)
    elif size == 4:
        regs[r] = value & 0xFFFF_FFFF
    elif size == 2:
        regs[r] = (regs[r] & ~0xFFFF) | (value & 0xFFFF)
    elif r >= 16:
        regs[r - 16] = (regs[r - 16] & ~0xFF00) | ((value & 0xFF) << 8)
    else:
        regs[r] = (regs[r] & ~0xFF) | (value & 0xFF)


def ea(cpu, i: Insn) -> int:
    """Linear address of a memory operand.

    A 64-bit one stays in the signed form of the registers and displacement, unwrapped: the
    MMU folds the rare sum that leaves that range, and a mask here would turn every kernel
    address into a long integer on PyPy (and back again in the MMU)."""
    regs = cpu.s.regs
    addr = i.disp
    if i.base >= 0:
        addr += regs[i.base]
    if i.index >= 0:
        addr += regs[i.index] << i.scale
    if i.adsize != 8:
        addr &= MASK[i.adsize]
    if i.seg >= 0:
        addr += cpu.s.segs[i.seg].base
    return addr


def ea_offset(cpu, i: Insn) -> int:
    """Effective address (offset in the segment) of a memory operand: lea's result.

    Taken back out of :func:`ea`, which every memory access calls, rather than computed
    beside it: the segment base is added to the offset after it is masked, so subtracting
    it gives the masked offset exactly, and only lea pays for the extra step."""
    addr = ea(cpu, i)
    return addr - cpu.s.segs[i.seg].base if i.seg >= 0 else addr


def read_rm(cpu, i: Insn, size: int) -> int:
    if i.is_mem:
        return cpu.mmu.read(ea(cpu, i), size)
    return get_reg(cpu.s.regs, i.rm, size)


def write_rm(cpu, i: Insn, size: int, value: int) -> None:
    if i.is_mem:
        cpu.mmu.write(ea(cpu, i), size, value)
    else:
        set_reg(cpu.s.regs, i.rm, size, value)


def set_stack_pointer(s, smask: int, sp: int) -> None:
    """Write ``sp`` (already masked by ``smask``) into RSP's low bits, keeping the rest."""
    s.regs[RSP] = signed64(sp) if smask == STACK_MASK_64 else (s.regs[RSP] & ~smask) | sp


def push(cpu, size: int, value: int) -> None:
    """Push ``value`` (unsigned, or in the register form when ``size`` is 8)."""
    s = cpu.s
    smask = cpu.stack_mask
    if smask == STACK_MASK_64:
        # RSP stays in the register form: masking a kernel stack pointer to unsigned would
        # make it a long integer on PyPy (the MMU folds the rare address out of range).
        sp = s.regs[RSP] - size
        cpu.mmu.write(sp, size, value)
        s.regs[RSP] = signed64(sp)
        return
    sp = (s.regs[RSP] - size) & smask
    cpu.mmu.write(s.segs[SS].base + sp, size, value)
    set_stack_pointer(s, smask, sp)


def pop(cpu, size: int) -> int:
    s = cpu.s
    smask = cpu.stack_mask
    if smask == STACK_MASK_64:
        sp = s.regs[RSP]
        value = cpu.mmu.read(sp, size)
        s.regs[RSP] = signed64(sp + size)
        return value
    sp = s.regs[RSP] & smask
    value = cpu.mmu.read(s.segs[SS].base + sp, size)
    set_stack_pointer(s, smask, (sp + size) & smask)
    return value


def pop_q(cpu) -> int:
    """Pop 8 bytes in the register form (pop and ret in 64-bit code)."""
    s = cpu.s
    if cpu.stack_mask != STACK_MASK_64:
        return signed64(pop(cpu, 8))
    sp = s.regs[RSP]
    value = cpu.mmu.read_q(sp)
    s.regs[RSP] = signed64(sp + 8)
    return value


def peek(cpu, size: int, offset: int = 0) -> int:
    """Read the stack at RSP+offset without popping."""
    s = cpu.s
    smask = cpu.stack_mask
    sp = (s.regs[RSP] + offset) & smask
    return cpu.mmu.read(s.segs[SS].base + sp if smask != STACK_MASK_64 else sp, size)

"""System instructions: hlt, cli/sti, flag bit ops, port I/O, cpuid, rdtsc, rdmsr/wrmsr,
syscall/sysret, swapgs, and the no-operation hints."""

from __future__ import annotations

import time

from ....devices.lapic import ApicMsrFault

from ..decoder import BYTE, END, IMM_B, Insn, register
from ..faults import GP, UD, GuestFault
from ..flags import materialize, read_rflags, write_rflags
from ..operands import MASK64, get_reg, set_reg
from ..segments import set_cs
from ..state import (CF, DF, FS, GS, IF, IOPL, MSR_APIC_BASE, MSR_CSTAR, MSR_EFER,
                     MSR_FMASK, MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_LSTAR,
                     MSR_PAT, MSR_STAR, MSR_SYSENTER_CS, MSR_SYSENTER_EIP, MSR_SYSENTER_ESP,
                     MSR_TSC, MSR_TSC_AUX, RAX, RBX, RCX, RDX, RF, SS, VM, SegmentCache)
from ..state import AF, PF, SF, ZF, signed64, unsigned64

EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11
EFER_WRITABLE = EFER_SCE | EFER_LME | EFER_NXE


def require_cpl0(cpu) -> None:
    if cpu.s.cpl != 0:
        raise GuestFault(GP, 0)


# The TSS field holding the I/O permission bitmap's offset, and the TSS types that have one
# (32-bit and 64-bit TSS, available or busy).
TSS_IOMAP_BASE = 0x66
TSS_TYPES_WITH_IOMAP = (0x9, 0xB)


def check_io(cpu, port: int, size: int) -> None:
    """#GP for port I/O above IOPL (or in virtual-8086 mode) unless the TSS I/O permission
    bitmap grants every port accessed (SDM vol. 1, 19.5). Linux's ioperm() and iopl() both
    work through the bitmap: without it, user programs such as pyhv-exit fault on ``out``."""
    s = cpu.s
    if s.cr0 & 1 and (s.cpl > (s.rflags & IOPL) >> 12 or s.rflags & VM):
        if not _io_bitmap_allows(cpu, port, size):
            raise GuestFault(GP, 0)


def _io_bitmap_allows(cpu, port: int, size: int) -> bool:
    tr = cpu.s.tr
    if tr.type not in TSS_TYPES_WITH_IOMAP or tr.limit < TSS_IOMAP_BASE + 1:
        return False
    offset = cpu.mmu.read_system(tr.base + TSS_IOMAP_BASE, 2) + (port >> 3)
    # Two bytes are read, since an access can span a byte of the bitmap; both must lie
    # within the TSS limit (Linux points the base past the limit to deny all ports).
    if offset + 1 > tr.limit:
        return False
    bits = cpu.mmu.read_system(tr.base + offset, 2)
    return not bits & (((1 << size) - 1) << (port & 7))


def hlt(cpu, i: Insn) -> None:
    require_cpl0(cpu)
    cpu.halted = True
    cpu.break_block = True


def _check_if_change(cpu) -> None:
    s = cpu.s
    if s.cr0 & 1 and s.cpl > (s.rflags & IOPL) >> 12:
        raise GuestFault(GP, 0)


def cli(cpu, i: Insn) -> None:
    _check_if_change(cpu)
    cpu.s.rflags &= ~IF


def sti(cpu, i: Insn) -> None:
    _check_if_change(cpu)
    s = cpu.s
    if not s.rflags & IF:
        s.rflags |= IF
        cpu.inhibit_irq = True  # the instruction after sti runs before any interrupt
    cpu.break_block = True


def flag_op(cpu, i: Insn) -> None:
    s = cpu.s
    op = i.op
    if op == 0xFC:
        s.rflags &= ~DF
        return
    if op == 0xFD:
        s.rflags |= DF
        return
    materialize(s)
    if op == 0xF8:
        s.rflags &= ~CF
    elif op == 0xF9:
        s.rflags |= CF
    else:  # cmc
        s.rflags ^= CF


def sahf(cpu, i: Insn) -> None:
    s = cpu.s
    materialize(s)
    mask = SF | ZF | AF | PF | CF
    s.rflags = (s.rflags & ~mask) | ((s.regs[RAX] >> 8) & mask)


def lahf(cpu, i: Insn) -> None:
    set_reg(cpu.s.regs, 16, 1, read_rflags(cpu.s) & 0xFF)


def _io_size(i: Insn) -> int:
    return 1 if i.op & 1 == 0 else (2 if i.opsize == 2 else 4)


def in_port(cpu, i: Insn) -> None:
    size = _io_size(i)
    port = i.imm if i.op < 0xE8 else cpu.s.regs[RDX] & 0xFFFF
    check_io(cpu, port, size)
    set_reg(cpu.s.regs, RAX, size, cpu.pio_bus.read(port, size))
    cpu.after_io()


def out_port(cpu, i: Insn) -> None:
    size = _io_size(i)
    port = i.imm if i.op < 0xE8 else cpu.s.regs[RDX] & 0xFFFF
    check_io(cpu, port, size)
    cpu.pio_bus.write(port, size, get_reg(cpu.s.regs, RAX, size))
    cpu.after_io()


# --- cpuid --------------------------------------------------------------------------------
# The answers come from the machine's CPU model (pyhv/cpu_model.py), the same table the KVM
# accelerator hands to KVM_SET_CPUID2, so a guest sees one CPU whichever accelerator runs it.


def cpuid(cpu, i: Insn) -> None:
    regs = cpu.s.regs
    eax, ebx, ecx, edx = cpu.cpu_model.cpuid(regs[RAX] & 0xFFFF_FFFF, regs[RCX] & 0xFFFF_FFFF, cpu.apic_id)
    regs[RAX], regs[RBX], regs[RCX], regs[RDX] = eax, ebx, ecx, edx


CR4_TSD = 1 << 2  # time stamp disable: rdtsc faults outside CPL 0


def read_tsc(cpu) -> int:
    if cpu.tsc is not None:  # the machine's TSC, which its timers share
        return cpu.tsc.read()
    return (time.monotonic_ns() + cpu.s.tsc_offset) & MASK64  # a 1 GHz TSC


def rdtsc(cpu, i: Insn) -> None:
    s = cpu.s
    if s.cr4 & CR4_TSD and s.cpl != 0:
        raise GuestFault(GP, 0)
    tsc = read_tsc(cpu)
    s.regs[RAX] = tsc & 0xFFFF_FFFF
    s.regs[RDX] = tsc >> 32


def rdtscp(cpu, i: Insn) -> None:
    rdtsc(cpu, i)
    cpu.s.regs[RCX] = cpu.s.msrs.get(MSR_TSC_AUX, 0) & 0xFFFF_FFFF


# --- MSRs ---------------------------------------------------------------------------------
_PLAIN_MSRS = frozenset((MSR_APIC_BASE, MSR_PAT, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK,
                         MSR_KERNEL_GS_BASE, MSR_TSC_AUX, MSR_SYSENTER_CS, MSR_SYSENTER_ESP,
                         MSR_SYSENTER_EIP))


def read_msr(cpu, index: int) -> int:
    s = cpu.s
    apic = cpu.lapic
    if apic is not None and apic.handles_msr(index):
        try:
            return apic.read_msr(index)
        except ApicMsrFault:
            raise GuestFault(GP, 0) from None
    if index == MSR_EFER:
        return s.efer
    if index == MSR_FS_BASE:
        return unsigned64(s.segs[FS].base)
    if index == MSR_GS_BASE:
        return unsigned64(s.segs[GS].base)
    if index == MSR_TSC:
        return read_tsc(cpu)
    if index in _PLAIN_MSRS:
        return s.msrs.get(index, 0)
    raise GuestFault(GP, 0)


def write_msr(cpu, index: int, value: int) -> None:
    s = cpu.s
    apic = cpu.lapic
    if apic is not None and apic.handles_msr(index):
        try:
            apic.write_msr(index, value)
        except ApicMsrFault:
            raise GuestFault(GP, 0) from None
        return
    if index == MSR_EFER:
        if value & ~EFER_WRITABLE & ~EFER_LMA:
            raise GuestFault(GP, 0)
        if s.cr0 & (1 << 31) and (value ^ s.efer) & EFER_LME:
            raise GuestFault(GP, 0)  # LME may not change while paging is on
        new = (value & EFER_WRITABLE) | (s.efer & EFER_LMA)
        if (new ^ s.efer) & EFER_NXE:
            cpu.mmu.flush()
        s.efer = new
        cpu.update_mode()
    elif index == MSR_FS_BASE:
        s.segs[FS].base = signed64(value)
    elif index == MSR_GS_BASE:
        s.segs[GS].base = signed64(value)
    elif index == MSR_TSC:
        if cpu.tsc is not None:
            cpu.tsc.write(value)
        else:
            s.tsc_offset = (value - time.monotonic_ns()) & MASK64
    elif index in _PLAIN_MSRS:
        s.msrs[index] = value
    else:
        raise GuestFault(GP, 0)


def rdmsr(cpu, i: Insn) -> None:
    require_cpl0(cpu)
    regs = cpu.s.regs
    value = read_msr(cpu, regs[RCX] & 0xFFFF_FFFF)
    regs[RAX] = value & 0xFFFF_FFFF
    regs[RDX] = value >> 32


def wrmsr(cpu, i: Insn) -> None:
    require_cpl0(cpu)
    regs = cpu.s.regs
    write_msr(cpu, regs[RCX] & 0xFFFF_FFFF, ((regs[RDX] & 0xFFFF_FFFF) << 32) | (regs[RAX] & 0xFFFF_FFFF))
    cpu.break_block = True


# --- fast system calls --------------------------------------------------------------------
def syscall(cpu, i: Insn) -> None:
    s = cpu.s
    if not s.efer & EFER_SCE or not s.efer & EFER_LMA:
        raise GuestFault(UD)
    star = s.msrs.get(MSR_STAR, 0)
    selector = (star >> 32) & 0xFFFC
    s.regs[RCX] = i.next_rip
    flags = read_rflags(s)
    s.regs[11] = flags & ~RF
    code = SegmentCache(selector, 0, 0xFFFF_FFFF, 0xB, 1, 0, 1, 0, 1, 1)
    s.segs[SS] = SegmentCache(selector + 8, 0, 0xFFFF_FFFF, 3, 1, 0, 1, 1, 0, 1)
    set_cs(cpu, code, 0)
    write_rflags(s, flags & ~s.msrs.get(MSR_FMASK, 0) & ~RF)
    s.rip = s.msrs.get(MSR_LSTAR if i.bits == 64 else MSR_CSTAR, 0)


def sysret(cpu, i: Insn) -> None:
    s = cpu.s
    if not s.efer & EFER_SCE:
        raise GuestFault(UD)
    if s.cpl != 0 or not s.efer & EFER_LMA or i.bits != 64:
        raise GuestFault(GP, 0)
    base = (s.msrs.get(MSR_STAR, 0) >> 48) & 0xFFFF
    target = s.regs[RCX]
    if i.opsize == 8:
        top = target >> 47
        if top != 0 and top != 0x1FFFF:
            raise GuestFault(GP, 0)
        code = SegmentCache(base + 16, 0, 0xFFFF_FFFF, 0xB, 1, 3, 1, 0, 1, 1)
    else:
        code = SegmentCache(base, 0, 0xFFFF_FFFF, 0xB, 1, 3, 1, 1, 0, 1)
        target &= 0xFFFF_FFFF
    s.segs[SS] = SegmentCache(((base + 8) & 0xFFFC) | 3, 0, 0xFFFF_FFFF, 3, 1, 3, 1, 1, 0, 1)
    write_rflags(s, (s.regs[11] & 0x3C7FD7) | 2)
    set_cs(cpu, code, 3)
    s.rip = target


def swapgs(cpu, i: Insn) -> None:
    s = cpu.s
    if i.bits != 64:
        raise GuestFault(UD)
    require_cpl0(cpu)
    gs = s.segs[GS]
    # The MSR keeps the architectural (unsigned) value, the segment base the register form.
    gs.base, s.msrs[MSR_KERNEL_GS_BASE] = (signed64(s.msrs.get(MSR_KERNEL_GS_BASE, 0)),
                                           unsigned64(gs.base))


def nop_modrm(cpu, i: Insn) -> None:
    pass


def ud2(cpu, i: Insn) -> None:
    raise GuestFault(UD)


def _register() -> None:
    register(0xF4, hlt, flags=END)
    register(0xFA, cli)
    register(0xFB, sti, flags=END)
    for op in (0xF5, 0xF8, 0xF9, 0xFC, 0xFD):
        register(op, flag_op)
    register(0x9E, sahf)
    register(0x9F, lahf)
    register(0xE4, in_port, imm=IMM_B, flags=BYTE)
    register(0xE5, in_port, imm=IMM_B)
    register(0xE6, out_port, imm=IMM_B, flags=BYTE | END)
    register(0xE7, out_port, imm=IMM_B, flags=END)
    register(0xEC, in_port, flags=BYTE)
    register(0xED, in_port)
    register(0xEE, out_port, flags=BYTE | END)
    register(0xEF, out_port, flags=END)
    register(0x1A2, cpuid)
    register(0x131, rdtsc)
    register(0x130, wrmsr, flags=END)
    register(0x132, rdmsr)
    register(0x105, syscall, flags=END)
    register(0x107, sysret, flags=END)
    register(0x10B, ud2, flags=END)
    register(0x10D, nop_modrm, modrm=True)  # prefetch/prefetchw
    for op in range(0x118, 0x120):
        register(op, nop_modrm, modrm=True)  # hint nops, nopl


_register()

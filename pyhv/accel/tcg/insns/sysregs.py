"""System registers: mov to/from CR and DR, lgdt/lidt/sgdt/sidt, lldt/ltr/sldt/str,
invlpg, smsw/lmsw, serialize, clts, xgetbv/xsetbv, fxsave/fxrstor, ldmxcsr/stmxcsr and fences."""

from __future__ import annotations

from ..decoder import END, F64, REG_ONLY, Insn, register
from ..faults import GP, UD, GuestFault
from ..fpu import MXCSR_MASK, fxrstor_image, fxsave_image
from ..operands import MASK, ea, get_reg, set_reg, write_rm, read_rm
from ..segments import load_ldt, load_tr
from ..state import RAX, RCX, RDX
from .system import require_cpl0, rdtscp, swapgs

CR0_PE = 1 << 0
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7
CR4_PCIDE = 1 << 17
CR4_SMEP = 1 << 20
# CR4 bits this CPU implements: vme pvi tsd de pse pae mce pge pce osfxsr osxmmexcpt
# fsgsbase pcide osxsave smep smap.
CR4_VALID = 0x1FF | (1 << 9) | (1 << 10) | (1 << 16) | (1 << 17) | (1 << 18) | (1 << 20) | (1 << 21)
EFER_LME = 1 << 8
EFER_LMA = 1 << 10


def write_cr(cpu, number: int, value: int) -> None:
    s = cpu.s
    if number == 0:
        if value >> 32:
            raise GuestFault(GP, 0)
        value |= CR0_ET
        if value & CR0_PG and not value & CR0_PE or (value & CR0_NW and not value & CR0_CD):
            raise GuestFault(GP, 0)
        old = s.cr0
        if value & CR0_PG and not old & CR0_PG and s.efer & EFER_LME:
            if not s.cr4 & CR4_PAE:
                raise GuestFault(GP, 0)
            s.efer |= EFER_LMA
        elif not value & CR0_PG and old & CR0_PG and s.efer & EFER_LMA:
            if cpu.bits == 64:
                raise GuestFault(GP, 0)
            s.efer &= ~EFER_LMA
        s.cr0 = value
        if (old ^ value) & (CR0_PG | CR0_WP | CR0_PE):
            cpu.mmu.flush()
        if (old ^ value) & CR0_PE and not value & CR0_PE:
            s.cpl = 0
            cpu.mmu.set_user(False)
        cpu.update_mode()
    elif number == 2:
        s.cr2 = value
    elif number == 3:
        s.cr3 = value & MASK[8] & ~(1 << 63)
        if not (s.cr4 & CR4_PCIDE and value >> 63):
            cpu.mmu.flush(keep_global=True)
    elif number == 4:
        if value & ~CR4_VALID:
            raise GuestFault(GP, 0)
        if s.efer & EFER_LMA and not value & CR4_PAE:
            raise GuestFault(GP, 0)
        old = s.cr4
        s.cr4 = value
        if (old ^ value) & (CR4_PSE | CR4_PAE | CR4_PGE | CR4_PCIDE | CR4_SMEP):
            cpu.mmu.flush()
    elif number == 8:
        if value >> 4:
            raise GuestFault(GP, 0)
        s.cr8 = value
    else:
        raise GuestFault(UD)


def read_cr(cpu, number: int) -> int:
    s = cpu.s
    if number == 0:
        return s.cr0
    if number == 2:
        return s.cr2
    if number == 3:
        return s.cr3
    if number == 4:
        return s.cr4
    if number == 8:
        return s.cr8
    raise GuestFault(UD)


def _cr_number(i: Insn) -> int:
    return i.reg  # REX.R already folded in (cr8)


def mov_from_cr(cpu, i: Insn) -> None:
    require_cpl0(cpu)
    size = 8 if i.bits == 64 else 4
    set_reg(cpu.s.regs, i.rm, size, read_cr(cpu, _cr_number(i)) & MASK[size])


def mov_to_cr(cpu, i: Insn) -> None:
    require_cpl0(cpu)
    size = 8 if i.bits == 64 else 4
    write_cr(cpu, _cr_number(i), get_reg(cpu.s.regs, i.rm, size))
    cpu.break_block = True


def mov_from_dr(cpu, i: Insn) -> None:
    require_cpl0(cpu)
    if i.reg > 7 or i.reg in (4, 5) and cpu.s.cr4 & (1 << 3):
        raise GuestFault(UD)
    size = 8 if i.bits == 64 else 4
    set_reg(cpu.s.regs, i.rm, size, cpu.debug_regs[i.reg & 7] & MASK[size])


def mov_to_dr(cpu, i: Insn) -> None:
    require_cpl0(cpu)
    if i.reg > 7 or i.reg in (4, 5) and cpu.s.cr4 & (1 << 3):
        raise GuestFault(UD)
    size = 8 if i.bits == 64 else 4
    cpu.debug_regs[i.reg & 7] = get_reg(cpu.s.regs, i.rm, size)


# --- 0F 01 --------------------------------------------------------------------------------
def _store_table(cpu, i: Insn, limit: int, base: int) -> None:
    addr = ea(cpu, i)
    cpu.mmu.write(addr, 2, limit)
    if i.bits == 64:
        cpu.mmu.write(addr + 2, 8, base)
    else:
        cpu.mmu.write(addr + 2, 4, base & 0xFFFF_FFFF)


def _load_table(cpu, i: Insn):
    require_cpl0(cpu)
    addr = ea(cpu, i)
    limit = cpu.mmu.read(addr, 2)
    if i.bits == 64:
        base = cpu.mmu.read(addr + 2, 8)
    else:
        base = cpu.mmu.read(addr + 2, 4)
        if i.opsize == 2:
            base &= 0xFF_FFFF
    return limit, base


def group7_0(cpu, i: Insn) -> None:
    if not i.is_mem:
        raise GuestFault(UD)  # vmcall and friends
    _store_table(cpu, i, cpu.s.gdtr_limit, cpu.s.gdtr_base)


def group7_1(cpu, i: Insn) -> None:
    if not i.is_mem:
        raise GuestFault(UD)  # monitor/mwait are not advertised
    _store_table(cpu, i, cpu.s.idtr_limit, cpu.s.idtr_base)


def group7_2(cpu, i: Insn) -> None:
    s = cpu.s
    if i.is_mem:
        s.gdtr_limit, s.gdtr_base = _load_table(cpu, i)
        return
    if i.rm == 0:  # xgetbv
        if s.regs[RCX] & 0xFFFF_FFFF != 0 or not s.cr4 & (1 << 18):
            raise GuestFault(GP if s.cr4 & (1 << 18) else UD, 0)
        s.regs[RAX], s.regs[RDX] = s.xcr0 & 0xFFFF_FFFF, s.xcr0 >> 32
        return
    raise GuestFault(UD)


def group7_3(cpu, i: Insn) -> None:
    if not i.is_mem:
        raise GuestFault(UD)
    s = cpu.s
    s.idtr_limit, s.idtr_base = _load_table(cpu, i)


def smsw(cpu, i: Insn) -> None:
    value = cpu.s.cr0
    if i.is_mem:
        cpu.mmu.write(ea(cpu, i), 2, value)
    else:
        set_reg(cpu.s.regs, i.rm, i.opsize, value & MASK[i.opsize])


def lmsw(cpu, i: Insn) -> None:
    require_cpl0(cpu)
    s = cpu.s
    value = read_rm(cpu, i, 2)
    # lmsw may set PE but never clear it, and touches only PE, MP, EM, TS.
    new = (s.cr0 & ~0xE) | (value & 0xF) | (s.cr0 & CR0_PE)
    write_cr(cpu, 0, new)
    cpu.break_block = True


def is_serialize(i: Insn) -> bool:
    """0F 01 /5 is serialize as 0F 01 E8 with no prefix; its other forms are CET and TSX
    instructions, not advertised."""
    return not (i.is_mem or i.rm != 0 or i.rep or i.pfx66)


def serialize(cpu, i: Insn) -> None:
    """Linux's sync_core uses serialize when CPUID has it, instead of an iret to itself after
    each code patch. This CPU finishes each instruction before the next and sees its own code
    writes: nothing to do."""
    if not is_serialize(i):
        raise GuestFault(UD)


def group7_7(cpu, i: Insn) -> None:
    if i.is_mem:  # invlpg
        require_cpl0(cpu)
        cpu.mmu.flush_page(ea(cpu, i))
        cpu.break_block = True
    elif i.rm == 0:
        swapgs(cpu, i)
    elif i.rm == 1:
        rdtscp(cpu, i)
    else:
        raise GuestFault(UD)


# --- 0F 00 --------------------------------------------------------------------------------
def _protected_only(cpu) -> None:
    if not cpu.s.cr0 & 1 or cpu.s.rflags & (1 << 17):
        raise GuestFault(UD)


def sldt(cpu, i: Insn) -> None:
    _protected_only(cpu)
    write_rm(cpu, i, 2 if i.is_mem else i.opsize, cpu.s.ldtr.selector)


def str_(cpu, i: Insn) -> None:
    _protected_only(cpu)
    write_rm(cpu, i, 2 if i.is_mem else i.opsize, cpu.s.tr.selector)


def lldt(cpu, i: Insn) -> None:
    _protected_only(cpu)
    require_cpl0(cpu)
    load_ldt(cpu, read_rm(cpu, i, 2))


def ltr(cpu, i: Insn) -> None:
    _protected_only(cpu)
    require_cpl0(cpu)
    load_tr(cpu, read_rm(cpu, i, 2))


def clts(cpu, i: Insn) -> None:
    require_cpl0(cpu)
    cpu.s.cr0 &= ~CR0_TS


def cache_op(cpu, i: Insn) -> None:
    require_cpl0(cpu)  # invd / wbinvd: nothing is cached


# --- 0F AE: fxsave/fxrstor, mxcsr, fences, clflush ------------------------------------------
def _fx_check(cpu, addr: int) -> None:
    if cpu.s.cr0 & (CR0_TS | (1 << 2)):
        from ..faults import NM
        raise GuestFault(NM)
    if addr & 0xF:
        raise GuestFault(GP, 0)


def fxsave(cpu, i: Insn) -> None:
    addr = ea(cpu, i)
    _fx_check(cpu, addr)
    s = cpu.s
    image = fxsave_image(s.x87, s.mxcsr, s.xmm, 16 if i.bits == 64 else 8)
    cpu.mmu.check_write(addr, len(image))
    for k in range(0, len(image), 8):
        cpu.mmu.write(addr + k, 8, int.from_bytes(image[k:k + 8], "little"))


def fxrstor(cpu, i: Insn) -> None:
    addr = ea(cpu, i)
    _fx_check(cpu, addr)
    s = cpu.s
    image = b"".join(cpu.mmu.read(addr + k, 8).to_bytes(8, "little") for k in range(0, 512, 8))
    if int.from_bytes(image[24:28], "little") & ~MXCSR_MASK:
        raise GuestFault(GP, 0)
    s.mxcsr = fxrstor_image(s.x87, image, s.xmm, 16 if i.bits == 64 else 8)


def ldmxcsr(cpu, i: Insn) -> None:
    value = cpu.mmu.read(ea(cpu, i), 4)
    if value & ~MXCSR_MASK:
        raise GuestFault(GP, 0)
    cpu.s.mxcsr = value


def stmxcsr(cpu, i: Insn) -> None:
    cpu.mmu.write(ea(cpu, i), 4, cpu.s.mxcsr)


def fence_or_clflush(cpu, i: Insn) -> None:
    if i.is_mem:
        if i.raw_reg != 7:
            raise GuestFault(UD)  # xsaveopt/xrstor: xsave is not advertised
        cpu.mmu.read(ea(cpu, i), 1)  # clflush faults like a read
    # lfence/mfence/sfence: one CPU with sequential memory: nothing to wait for.


def _mem_only(fn):
    def handler(cpu, i: Insn) -> None:
        if not i.is_mem:
            raise GuestFault(UD)
        fn(cpu, i)
    handler.__name__ = fn.__name__
    return handler


def _register() -> None:
    register(0x120, mov_from_cr, modrm=True, flags=REG_ONLY | F64)
    register(0x122, mov_to_cr, modrm=True, flags=REG_ONLY | F64 | END)
    register(0x121, mov_from_dr, modrm=True, flags=REG_ONLY | F64)
    register(0x123, mov_to_dr, modrm=True, flags=REG_ONLY | F64)
    register(0x101, group7_0, reg=0)
    register(0x101, group7_1, reg=1)
    register(0x101, group7_2, reg=2, flags=END)
    register(0x101, group7_3, reg=3)
    register(0x101, smsw, reg=4)
    register(0x101, serialize, reg=5)
    register(0x101, lmsw, reg=6, flags=END)
    register(0x101, group7_7, reg=7, flags=END)
    register(0x100, sldt, reg=0)
    register(0x100, str_, reg=1)
    register(0x100, lldt, reg=2)
    register(0x100, ltr, reg=3)
    register(0x106, clts)
    register(0x108, cache_op)
    register(0x109, cache_op)
    register(0x1AE, _mem_only(fxsave), reg=0)
    register(0x1AE, _mem_only(fxrstor), reg=1)
    register(0x1AE, _mem_only(ldmxcsr), reg=2)
    register(0x1AE, _mem_only(stmxcsr), reg=3)
    for reg in (5, 6, 7):
        register(0x1AE, fence_or_clflush, reg=reg)


_register()

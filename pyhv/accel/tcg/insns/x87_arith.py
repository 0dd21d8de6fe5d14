"""The x87 register stack, arithmetic, comparisons and memory formats, for :mod:`.x87`.

Exceptions set FSW flags; a masked one produces the architecture's default result (the
real indefinite, infinity), an unmasked one raises :class:`Unmasked` so that the instruction
stops without writing its destination, and #MF comes at the next waiting x87 instruction
(CR0.NE is the only error-reporting mode modelled).
"""

from __future__ import annotations

import math
from ..decoder import Insn
from ..faults import MF, NM, GuestFault
from ..flags import CC_EAGER
from ..fpu import (F80_INDEFINITE, F80_ONE, FSW_C0, FSW_C1, FSW_C2, FSW_C3, FSW_CC, FSW_ES, FSW_IE,
                   FSW_PE, FSW_SF, FSW_ZE, MASK64, X87State, f32_bits_to_float, f64_bits_to_float,
                   f80_is_nan, f80_to_float, f80_to_int, float_to_f32_bits, float_to_f64_bits,
                   float_to_f80, int_to_f80)
from ..state import ARITH_FLAGS, CF, PF, ZF

CR0_MP, CR0_EM, CR0_TS = 1 << 1, 1 << 2, 1 << 3
SIGN80 = 1 << 79
# FLDL2T, FLDL2E, FLDPI, FLDLG2, FLDLN2: the constants rounded to nearest in 64 mantissa bits.
CONSTANTS = {
    0xE8: F80_ONE,
    0xE9: (0x4000 << 64) | 0xD49A_784B_CD1B_8AFE,
    0xEA: (0x3FFF << 64) | 0xB8AA_3B29_5C17_F0BC,
    0xEB: (0x4000 << 64) | 0xC90F_DAA2_2168_C235,
    0xEC: (0x3FFD << 64) | 0x9A20_9A84_FBCF_F799,
    0xED: (0x3FFE << 64) | 0xB172_17F7_D1CF_79AC,
    0xEE: 0,
}
ADD, MUL, COM, COMP, SUB, SUBR, DIV, DIVR = range(8)


class Unmasked(Exception):
    """An unmasked x87 exception: the instruction stops without writing its result."""


def enter(cpu, waiting: bool = True) -> X87State:
    s = cpu.s
    if s.cr0 & (CR0_EM | CR0_TS):
        raise GuestFault(NM)
    x87 = s.x87
    if waiting and x87.fsw & FSW_ES:
        raise GuestFault(MF)
    return x87


def raise_flags(x87: X87State, flags: int) -> None:
    x87.fsw |= flags
    if flags & ~x87.fcw & 0x3F:
        x87.update_summary()
        raise Unmasked()


def record(x87: X87State, cpu, i: Insn, opcode: int, address: int) -> None:
    """FOP/FIP/FDP of the last non-control instruction, as FXSAVE reports them."""
    x87.fop = ((opcode & 7) << 8) | (i.mod << 6) | (i.raw_reg << 3) | (i.rm & 7)
    x87.fip = i.addr
    x87.fdp = address


# --- the register stack -----------------------------------------------------------------------
def st_get(x87: X87State, n: int) -> int:
    phys = (x87.top + n) & 7
    if not x87.tags >> phys & 1:
        x87.fsw &= ~FSW_C1
        raise_flags(x87, FSW_IE | FSW_SF)
        return F80_INDEFINITE
    return x87.st[phys]


def st_set(x87: X87State, n: int, raw: int) -> None:
    phys = (x87.top + n) & 7
    x87.st[phys] = raw
    x87.tags |= 1 << phys


def push(x87: X87State, raw: int) -> None:
    top = (x87.top - 1) & 7
    if x87.tags >> top & 1:
        x87.fsw |= FSW_C1
        raise_flags(x87, FSW_IE | FSW_SF)
        raw = F80_INDEFINITE
    x87.top = top
    x87.st[top] = raw
    x87.tags |= 1 << top


def pop(x87: X87State) -> None:
    x87.tags &= ~(1 << x87.top)
    x87.top = (x87.top + 1) & 7


# --- arithmetic on the float model ------------------------------------------------------------
def _from_float(x87: X87State, value: float, operands_nan: bool) -> int:
    if math.isnan(value) and not operands_nan:
        raise_flags(x87, FSW_IE)
        return F80_INDEFINITE
    return float_to_f80(value)


def arith(x87: X87State, op: int, a: int, b: int) -> int:
    """a op b for ADD, MUL, SUB, SUBR, DIV, DIVR on raw 80-bit values."""
    if f80_is_nan(a) or f80_is_nan(b):
        return (a if f80_is_nan(a) else b) | (1 << 62)  # propagate as a quiet NaN
    fa, fb = f80_to_float(a), f80_to_float(b)
    if op == SUBR or op == DIVR:
        fa, fb = fb, fa
    if op == ADD:
        result = fa + fb
    elif op == MUL:
        result = fa * fb
    elif op == SUB or op == SUBR:
        result = fa - fb
    else:
        if fb == 0.0:
            if fa == 0.0 or math.isnan(fa):
                raise_flags(x87, FSW_IE)
                return F80_INDEFINITE
            raise_flags(x87, FSW_ZE)
            negative = (math.copysign(1.0, fa) < 0) != (math.copysign(1.0, fb) < 0)
            return float_to_f80(-math.inf if negative else math.inf)
        result = fa / fb
    return _from_float(x87, result, False)


def compare(x87: X87State, a: int, b: int, quiet: bool) -> int:
    """C3/C2/C0 for a compared with b: 000 greater, 001 less, 100 equal, 111 unordered."""
    if f80_is_nan(a) or f80_is_nan(b):
        signaling = any(f80_is_nan(v) and not v >> 62 & 1 for v in (a, b))
        if signaling or not quiet:
            raise_flags(x87, FSW_IE)
        return FSW_C3 | FSW_C2 | FSW_C0
    fa, fb = f80_to_float(a), f80_to_float(b)
    if fa > fb:
        return 0
    if fa < fb:
        return FSW_C0
    return FSW_C3


def set_cc(x87: X87State, cc: int) -> None:
    x87.fsw = (x87.fsw & ~FSW_CC) | cc


def compare_to_eflags(cpu, cc: int) -> None:
    s = cpu.s
    flags = (ZF if cc & FSW_C3 else 0) | (PF if cc & FSW_C2 else 0) | (CF if cc & FSW_C0 else 0)
    s.rflags = (s.rflags & ~ARITH_FLAGS) | flags
    s.cc_op = CC_EAGER


def rounding(x87: X87State) -> int:
    return (x87.fcw >> 10) & 3


# --- memory operands --------------------------------------------------------------------------
def load_real(cpu, addr: int, size: int) -> int:
    if size == 4:
        return float_to_f80(f32_bits_to_float(cpu.mmu.read(addr, 4)))
    if size == 8:
        return float_to_f80(f64_bits_to_float(cpu.mmu.read(addr, 8)))
    return cpu.mmu.read(addr, 8) | (cpu.mmu.read(addr + 8, 2) << 64)


def store_real(cpu, x87: X87State, addr: int, size: int, raw: int) -> None:
    if size == 10:
        cpu.mmu.check_write(addr, 10)
        cpu.mmu.write(addr, 8, raw & MASK64)
        cpu.mmu.write(addr + 8, 2, raw >> 64)
        return
    value = f80_to_float(raw)
    bits = float_to_f32_bits(value) if size == 4 else float_to_f64_bits(value)
    if not math.isnan(value) and not math.isinf(value):
        back = f32_bits_to_float(bits) if size == 4 else f64_bits_to_float(bits)
        if back != value or float_to_f80(value) != raw:
            raise_flags(x87, FSW_PE)
    cpu.mmu.write(addr, size, bits)


def load_int(cpu, addr: int, size: int) -> int:
    value = cpu.mmu.read(addr, size)
    sign = 1 << (8 * size - 1)
    return int_to_f80((value & (sign - 1)) - (value & sign))


def store_int(cpu, x87: X87State, addr: int, size: int, raw: int) -> None:
    value = f80_to_int(raw, rounding(x87), 8 * size)
    if value is None:
        raise_flags(x87, FSW_IE)
        value = 1 << (8 * size - 1)  # the integer indefinite
    elif int_to_f80(value) != raw:
        raise_flags(x87, FSW_PE)
    cpu.mmu.write(addr, size, value & ((1 << (8 * size)) - 1))


def load_bcd(cpu, addr: int) -> int:
    raw = cpu.mmu.read(addr, 8) | (cpu.mmu.read(addr + 8, 2) << 64)
    value = 0
    for n in range(17, -1, -1):
        value = value * 10 + ((raw >> (4 * n)) & 0xF)
    return int_to_f80(-value if raw >> 79 else value)


def store_bcd(cpu, x87: X87State, addr: int, raw: int) -> None:
    value = f80_to_int(raw, rounding(x87), 64)
    if value is None or abs(value) >= 10 ** 18:
        raise_flags(x87, FSW_IE)
        packed = 0xFFFF_C000_0000_0000_0000  # the packed-BCD indefinite
    else:
        packed = SIGN80 if value < 0 or raw >> 79 else 0
        digits = abs(value)
        for n in range(18):
            packed |= (digits % 10) << (4 * n)
            digits //= 10
    cpu.mmu.check_write(addr, 10)
    cpu.mmu.write(addr, 8, packed & MASK64)
    cpu.mmu.write(addr + 8, 2, packed >> 64)


# --- environment: FNSTENV/FLDENV/FNSAVE/FRSTOR (protected-mode layouts) -------------------------
def store_env(cpu, x87: X87State, addr: int, opsize: int) -> int:
    width = 2 if opsize == 2 else 4
    fields = (x87.fcw, x87.status_word, x87.full_tag_word(), x87.fip & 0xFFFF_FFFF,
              (x87.fop << 16) | x87.fcs if width == 4 else x87.fcs, x87.fdp & 0xFFFF_FFFF, x87.fds)
    cpu.mmu.check_write(addr, 7 * width)
    for n, value in enumerate(fields):
        cpu.mmu.write(addr + n * width, width, value & (0xFFFF if width == 2 or n < 3 else 0xFFFF_FFFF))
    return addr + 7 * width


def load_env(cpu, x87: X87State, addr: int, opsize: int) -> int:
    width = 2 if opsize == 2 else 4
    fields = [cpu.mmu.read(addr + n * width, width) for n in range(7)]
    x87.fcw = fields[0] & 0xFFFF
    x87.set_full_tag_word(fields[2] & 0xFFFF)
    x87.fip = fields[3]
    x87.fop = (fields[4] >> 16) & 0x7FF if width == 4 else 0
    x87.fcs = fields[4] & 0xFFFF
    x87.fdp = fields[5]
    x87.fds = fields[6] & 0xFFFF
    x87.set_status_word(fields[1] & 0xFFFF)
    return addr + 7 * width


def fnsave(cpu, x87: X87State, addr: int, opsize: int) -> None:
    regs = store_env(cpu, x87, addr, opsize)
    cpu.mmu.check_write(regs, 80)
    for n in range(8):
        store_real(cpu, x87, regs + 10 * n, 10, x87.st[(x87.top + n) & 7])
    x87.reset()


def frstor(cpu, x87: X87State, addr: int, opsize: int) -> None:
    width = 2 if opsize == 2 else 4
    values = [load_real(cpu, addr + 7 * width + 10 * n, 10) for n in range(8)]
    load_env(cpu, x87, addr, opsize)
    for n, raw in enumerate(values):
        x87.st[(x87.top + n) & 7] = raw

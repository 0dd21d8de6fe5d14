"""SSE/SSE2 floating point: packed and scalar arithmetic, bitwise logic, compares, (u)comis,
and the conversions between integers, singles and doubles (0F 2A-2F, 51-5F, C2, E6).

Lanes are computed with Python floats and stored through ``struct`` (which rounds to single
precision to nearest). An invalid operation gives the default NaN; a NaN operand propagates,
quieted, the first operand's taking precedence. MXCSR rounding control applies to the
float-to-integer conversions; exception flags in MXCSR are not raised (all masked is the
only mode modelled).
"""

from __future__ import annotations

import math
import struct
from typing import Callable, Dict, List

from ..decoder import IMM_B, Insn, register
from ..faults import UD, GuestFault
from ..flags import CC_EAGER
from ..fpu import f80_to_int, float_to_f32_bits, float_to_f80
from ..operands import read_rm, set_reg
from ..state import ARITH_FLAGS, CF, PF, ZF
from .sse import MASK128, NONE, P66, PF2, PF3, check, join, lanes, prefix, src128, src_low

MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
DEFAULT_NAN = {4: 0xFFC0_0000, 8: 0xFFF8_0000_0000_0000}
QUIET_BIT = {4: 1 << 22, 8: 1 << 51}
_FORMAT = {4: "<f", 8: "<d"}
_BITS_FORMAT = {4: "<I", 8: "<Q"}


def to_float(bits: int, width: int) -> float:
    return struct.unpack(_FORMAT[width], struct.pack(_BITS_FORMAT[width], bits))[0]


def to_bits(value: float, width: int) -> int:
    if width == 4:
        return float_to_f32_bits(value)
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def is_nan(bits: int, width: int) -> bool:
    if width == 4:
        return bits & 0x7F80_0000 == 0x7F80_0000 and bits & 0x007F_FFFF != 0
    return bits & 0x7FF0_0000_0000_0000 == 0x7FF0_0000_0000_0000 and bits & 0x000F_FFFF_FFFF_FFFF != 0


def _divide(a: float, b: float) -> float:
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _sqrt(a: float, b: float) -> float:
    return math.nan if b < 0 else math.sqrt(b)


# opcode -> fn(dest lane, source lane) as floats
_ARITH: Dict[int, Callable[[float, float], float]] = {
    0x158: lambda a, b: a + b, 0x159: lambda a, b: a * b, 0x15C: lambda a, b: a - b,
    0x15E: _divide, 0x151: _sqrt,
}


def lane_arith(op: int, a: int, b: int, width: int) -> int:
    """One lane of an arithmetic op on raw bits, with x86 NaN rules and min/max semantics."""
    if op == 0x15D or op == 0x15F:  # min/max: the source unless the comparison holds
        fa, fb = to_float(a, width), to_float(b, width)
        if is_nan(a, width) or is_nan(b, width):
            return b
        return a if (fa < fb if op == 0x15D else fa > fb) else b
    a_nan = is_nan(a, width) and op != 0x151
    if a_nan or is_nan(b, width):
        return (a if a_nan else b) | QUIET_BIT[width]
    result = _ARITH[op](to_float(a, width), to_float(b, width))
    if math.isnan(result):
        return DEFAULT_NAN[width]
    return to_bits(result, width)


def _width_and_scalar(kind: int) -> tuple:
    if kind == NONE:
        return 4, False
    if kind == P66:
        return 8, False
    return (4, True) if kind == PF3 else (8, True)


def arith(cpu, i: Insn) -> None:
    """0F 51, 58-5F (less 5A, 5B): add, mul, sub, min, div, max, sqrt in ps/pd/ss/sd forms."""
    check(cpu)
    s = cpu.s
    width, scalar = _width_and_scalar(prefix(i))
    op = i.op
    dest = s.xmm[i.reg]
    if scalar:
        mask = MASK32 if width == 4 else MASK64
        result = lane_arith(op, dest & mask, src_low(cpu, i, width), width)
        s.xmm[i.reg] = (dest & ~mask & MASK128) | result
        return
    a, b = lanes(dest, width), lanes(src128(cpu, i), width)
    s.xmm[i.reg] = join([lane_arith(op, x, y, width) for x, y in zip(a, b)], width)


def logic(cpu, i: Insn) -> None:
    """0F 54-57: and, andn, or, xor of ps/pd (the same bits either way)."""
    check(cpu)
    if prefix(i) >= PF3:
        raise GuestFault(UD)
    s = cpu.s
    a, b = s.xmm[i.reg], src128(cpu, i)
    op = i.op
    if op == 0x154:
        s.xmm[i.reg] = a & b
    elif op == 0x155:
        s.xmm[i.reg] = ~a & b & MASK128
    elif op == 0x156:
        s.xmm[i.reg] = a | b
    else:
        s.xmm[i.reg] = a ^ b


def _compare_lane(a: int, b: int, width: int, predicate: int) -> bool:
    unordered = is_nan(a, width) or is_nan(b, width)
    if predicate == 3:
        return unordered
    if predicate == 7:
        return not unordered
    if unordered:
        return predicate in (4, 5, 6)  # neq, nlt, nle hold for unordered operands
    fa, fb = to_float(a, width), to_float(b, width)
    holds = (fa == fb, fa < fb, fa <= fb)[predicate & 3]
    return not holds if predicate >= 4 else holds


def compare(cpu, i: Insn) -> None:
    """0F C2 ib: cmpps/cmppd/cmpss/cmpsd with predicates eq lt le unord neq nlt nle ord."""
    check(cpu)
    s = cpu.s
    width, scalar = _width_and_scalar(prefix(i))
    predicate = i.imm & 7
    ones = MASK32 if width == 4 else MASK64
    dest = s.xmm[i.reg]
    if scalar:
        hit = _compare_lane(dest & ones, src_low(cpu, i, width), width, predicate)
        s.xmm[i.reg] = (dest & ~ones & MASK128) | (ones if hit else 0)
        return
    a, b = lanes(dest, width), lanes(src128(cpu, i), width)
    s.xmm[i.reg] = join([ones if _compare_lane(x, y, width, predicate) else 0
                         for x, y in zip(a, b)], width)


def ordered_compare(cpu, i: Insn) -> None:
    """0F 2E/2F: ucomiss/comiss, 66: ucomisd/comisd into ZF, PF, CF (OF, SF, AF cleared)."""
    check(cpu)
    kind = prefix(i)
    if kind >= PF3:
        raise GuestFault(UD)
    width = 8 if kind == P66 else 4
    s = cpu.s
    a = s.xmm[i.reg] & (MASK64 if width == 8 else MASK32)
    b = src_low(cpu, i, width)
    if is_nan(a, width) or is_nan(b, width):
        flags = ZF | PF | CF
    else:
        fa, fb = to_float(a, width), to_float(b, width)
        flags = ZF if fa == fb else CF if fa < fb else 0
    s.rflags = (s.rflags & ~ARITH_FLAGS) | flags
    s.cc_op = CC_EAGER


# --- conversions --------------------------------------------------------------------------------
def float_to_int(value: float, rounding: int, bits: int) -> int:
    """x86's conversion: out of range or NaN gives the integer indefinite (sign bit only)."""
    if math.isnan(value) or math.isinf(value):
        return 1 << (bits - 1)
    result = f80_to_int(float_to_f80(value), rounding, bits)
    if result is None:
        return 1 << (bits - 1)
    return result & ((1 << bits) - 1)


def _mxcsr_rounding(cpu) -> int:
    return (cpu.s.mxcsr >> 13) & 3


def int_to_scalar(cpu, i: Insn) -> None:
    """F3 0F 2A: cvtsi2ss, F2 0F 2A: cvtsi2sd, from r/m32 or r/m64 (REX.W)."""
    check(cpu)
    kind = prefix(i)
    if kind < PF3:
        raise GuestFault(UD)  # cvtpi2ps/cvtpi2pd take MMX registers
    size = 8 if i.rex & 8 else 4
    raw = read_rm(cpu, i, size)
    value = raw - (1 << (8 * size)) if raw >> (8 * size - 1) else raw
    width = 4 if kind == PF3 else 8
    mask = MASK32 if width == 4 else MASK64
    s = cpu.s
    s.xmm[i.reg] = (s.xmm[i.reg] & ~mask & MASK128) | to_bits(float(value), width)


def scalar_to_int(cpu, i: Insn) -> None:
    """F3/F2 0F 2C (truncating) and 2D (MXCSR rounding): cvt(t)ss2si / cvt(t)sd2si."""
    check(cpu)
    kind = prefix(i)
    if kind < PF3:
        raise GuestFault(UD)  # cvt(t)ps2pi/cvt(t)pd2pi write MMX registers
    width = 4 if kind == PF3 else 8
    value = to_float(src_low(cpu, i, width), width)
    rounding = 3 if i.op == 0x12C else _mxcsr_rounding(cpu)
    size = 8 if i.rex & 8 else 4
    set_reg(cpu.s.regs, i.reg, size, float_to_int(value, rounding, 8 * size))


def convert_precision(cpu, i: Insn) -> None:
    """0F 5A: cvtps2pd, 66: cvtpd2ps, F3: cvtss2sd, F2: cvtsd2ss."""
    check(cpu)
    s = cpu.s
    kind = prefix(i)
    dest = s.xmm[i.reg]
    if kind == PF3:
        s.xmm[i.reg] = (dest & ~MASK64 & MASK128) | _convert(src_low(cpu, i, 4), 4, 8)
    elif kind == PF2:
        s.xmm[i.reg] = (dest & ~MASK32 & MASK128) | _convert(src_low(cpu, i, 8), 8, 4)
    elif kind == NONE:
        low = src_low(cpu, i, 8)
        s.xmm[i.reg] = join([_convert(low & MASK32, 4, 8), _convert(low >> 32, 4, 8)], 8)
    else:
        values = lanes(src128(cpu, i), 8)
        s.xmm[i.reg] = join([_convert(values[0], 8, 4), _convert(values[1], 8, 4), 0, 0], 4)


def _convert(bits: int, src_width: int, dest_width: int) -> int:
    if is_nan(bits, src_width):
        sign = bits >> (8 * src_width - 1)
        if dest_width == 8:
            payload = (bits & 0x003F_FFFF) << 29
            return (sign << 63) | 0x7FF8_0000_0000_0000 | payload
        return (sign << 31) | 0x7FC0_0000 | ((bits >> 29) & 0x003F_FFFF)
    return to_bits(to_float(bits, src_width), dest_width)


def convert_dwords(cpu, i: Insn) -> None:
    """0F 5B: cvtdq2ps, 66: cvtps2dq (MXCSR rounding), F3: cvttps2dq."""
    check(cpu)
    kind = prefix(i)
    if kind == PF2:
        raise GuestFault(UD)
    s = cpu.s
    values = lanes(src128(cpu, i), 4)
    if kind == NONE:
        signed = [v - (1 << 32) if v >> 31 else v for v in values]
        s.xmm[i.reg] = join([to_bits(float(v), 4) for v in signed], 4)
        return
    rounding = 3 if kind == PF3 else _mxcsr_rounding(cpu)
    s.xmm[i.reg] = join([float_to_int(to_float(v, 4), rounding, 32) for v in values], 4)


def convert_pd_dq(cpu, i: Insn) -> None:
    """66 0F E6: cvttpd2dq, F2: cvtpd2dq, F3: cvtdq2pd."""
    check(cpu)
    kind = prefix(i)
    s = cpu.s
    if kind == PF3:
        low = src_low(cpu, i, 8)
        dwords: List[int] = [low & MASK32, low >> 32]
        signed = [v - (1 << 32) if v >> 31 else v for v in dwords]
        s.xmm[i.reg] = join([to_bits(float(v), 8) for v in signed], 8)
        return
    if kind == NONE:
        raise GuestFault(UD)
    rounding = 3 if kind == P66 else _mxcsr_rounding(cpu)
    values = lanes(src128(cpu, i), 8)
    s.xmm[i.reg] = join([float_to_int(to_float(v, 8), rounding, 32) for v in values] + [0, 0], 4)


def _register() -> None:
    for op in (0x151, 0x158, 0x159, 0x15C, 0x15D, 0x15E, 0x15F):
        register(op, arith, modrm=True)
    for op in (0x154, 0x155, 0x156, 0x157):
        register(op, logic, modrm=True)
    register(0x1C2, compare, modrm=True, imm=IMM_B)
    register(0x12E, ordered_compare, modrm=True)
    register(0x12F, ordered_compare, modrm=True)
    register(0x12A, int_to_scalar, modrm=True)
    register(0x12C, scalar_to_int, modrm=True)
    register(0x12D, scalar_to_int, modrm=True)
    register(0x15A, convert_precision, modrm=True)
    register(0x15B, convert_dwords, modrm=True)
    register(0x1E6, convert_pd_dq, modrm=True)


_register()

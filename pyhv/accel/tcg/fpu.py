"""x87 floating-point unit state, 80-bit extended-precision conversions, and the FXSAVE image.

Registers hold raw 80-bit values (sign:1, exponent:15, explicit-integer mantissa:64) in
*physical* order; ST(i) is physical register (TOP + i) mod 8. Keeping the raw bits makes
loads, stores, FXSAVE/FXRSTOR and integer conversions exact; arithmetic goes through
Python floats (53-bit mantissa), which is the known precision limit of this model.
"""

from __future__ import annotations

import math
import struct
from typing import List, Optional

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
F80_EXP_MAX = 0x7FFF
F80_BIAS = 16383
F80_INTEGER_BIT = 1 << 63
# The value a masked invalid operation produces: negative quiet NaN "real indefinite".
F80_INDEFINITE = (0xFFFF << 64) | 0xC000_0000_0000_0000
F80_ZERO = 0
F80_ONE = (F80_BIAS << 64) | F80_INTEGER_BIT

# FSW bits (TOP, bits 11-13, lives in X87State.top).
FSW_IE, FSW_DE, FSW_ZE, FSW_OE, FSW_UE, FSW_PE, FSW_SF, FSW_ES = (1 << b for b in range(8))
FSW_C0, FSW_C1, FSW_C2, FSW_C3 = 1 << 8, 1 << 9, 1 << 10, 1 << 14
FSW_CC = FSW_C0 | FSW_C1 | FSW_C2 | FSW_C3
FSW_B = 1 << 15
FSW_EXCEPTIONS = 0x3F
FCW_RESET = 0x037F  # all exceptions masked, 64-bit precision, round to nearest
MXCSR_MASK = 0xFFFF  # MXCSR bits this CPU implements (DAZ included), reported by FXSAVE

# FXSAVE area (Intel SDM vol. 1, table 10-2; the 64-bit layout with REX.W=0).
FX_FCW, FX_FSW, FX_FTW, FX_FOP, FX_FIP, FX_FDP = 0, 2, 4, 6, 8, 16
FX_MXCSR, FX_MXCSR_MASK, FX_ST0, FX_XMM0 = 24, 28, 32, 160
FX_SIZE = 512


class X87State:
    """The x87 registers; MMX registers alias the mantissas of the physical registers."""

    __slots__ = ("fcw", "fsw", "top", "tags", "st", "fop", "fip", "fdp", "fcs", "fds")

    def __init__(self) -> None:
        self.st: List[int] = [0] * 8
        self.reset()
        self.fcw = 0x0040  # the power-on value; FNINIT sets FCW_RESET

    def reset(self) -> None:
        """FNINIT: control word to its default, status, tags and pointers cleared."""
        self.fcw = FCW_RESET
        self.fsw = 0  # without TOP
        self.top = 0
        self.tags = 0  # bit n set: physical register n holds a value (the FXSAVE abridged tag)
        self.fop = 0
        self.fip = 0
        self.fdp = 0
        self.fcs = 0
        self.fds = 0

    @property
    def status_word(self) -> int:
        return (self.fsw & ~(7 << 11)) | (self.top << 11)

    def set_status_word(self, value: int) -> None:
        self.top = (value >> 11) & 7
        self.fsw = value & ~(7 << 11) & 0xFFFF
        self.update_summary()

    def update_summary(self) -> None:
        """ES and B follow from the exception flags that the control word does not mask."""
        if self.fsw & ~self.fcw & FSW_EXCEPTIONS:
            self.fsw |= FSW_ES | FSW_B
        else:
            self.fsw &= ~(FSW_ES | FSW_B)

    def full_tag_word(self) -> int:
        """The 16-bit tag word of FSTENV/FSAVE: 00 valid, 01 zero, 10 special, 11 empty."""
        word = 0
        for phys in range(8):
            if not self.tags >> phys & 1:
                tag = 3
            else:
                tag = classify_tag(self.st[phys])
            word |= tag << (2 * phys)
        return word

    def set_full_tag_word(self, word: int) -> None:
        self.tags = 0
        for phys in range(8):
            if (word >> (2 * phys)) & 3 != 3:
                self.tags |= 1 << phys


def classify_tag(raw: int) -> int:
    exponent = (raw >> 64) & F80_EXP_MAX
    mantissa = raw & MASK64
    if exponent == 0:
        return 1 if mantissa == 0 else 2
    if exponent == F80_EXP_MAX or not mantissa & F80_INTEGER_BIT:
        return 2
    return 0


# --- conversions ----------------------------------------------------------------------------
def f80_is_nan(raw: int) -> bool:
    return (raw >> 64) & F80_EXP_MAX == F80_EXP_MAX and raw & (MASK64 >> 1) != 0


def f80_to_float(raw: int) -> float:
    negative = raw >> 79 & 1
    exponent = (raw >> 64) & F80_EXP_MAX
    mantissa = raw & MASK64
    if exponent == F80_EXP_MAX:
        value = math.nan if mantissa & (MASK64 >> 1) else math.inf
    elif mantissa == 0:
        value = 0.0
    else:
        try:
            value = math.ldexp(float(mantissa), max(exponent, 1) - F80_BIAS - 63)
        except OverflowError:
            value = math.inf
    return -value if negative else value


def float_to_f80(value: float) -> int:
    """The exact 80-bit form of a double (every double fits)."""
    sign = (1 << 79) if math.copysign(1.0, value) < 0 else 0
    if math.isnan(value):
        return sign | (F80_EXP_MAX << 64) | 0xC000_0000_0000_0000
    if math.isinf(value):
        return sign | (F80_EXP_MAX << 64) | F80_INTEGER_BIT
    if value == 0.0:
        return sign
    fraction, exponent = math.frexp(abs(value))  # fraction in [0.5, 1)
    mantissa = int(math.ldexp(fraction, 64))
    return sign | ((exponent + F80_BIAS - 1) << 64) | mantissa


def int_to_f80(value: int) -> int:
    """The exact 80-bit form of an integer of up to 64 bits."""
    if value == 0:
        return 0
    sign = (1 << 79) if value < 0 else 0
    magnitude = -value if value < 0 else value
    width = magnitude.bit_length()
    return sign | ((F80_BIAS + width - 1) << 64) | (magnitude << (64 - width))


def f80_to_int(raw: int, rounding: int, bits: int) -> Optional[int]:
    """Round ``raw`` to an integer by x87/SSE rounding control ``rounding`` (0 nearest-even,
    1 down, 2 up, 3 toward zero); None when it is NaN, infinite or outside ``bits`` signed bits."""
    negative = raw >> 79 & 1
    exponent = (raw >> 64) & F80_EXP_MAX
    mantissa = raw & MASK64
    if exponent == F80_EXP_MAX:
        return None
    shift = max(exponent, 1) - F80_BIAS - 63
    if shift >= 0:
        if shift > bits:
            return None
        value = mantissa << shift
    else:
        drop = -shift
        if drop > 66:
            whole, rest, half = 0, (1 if mantissa else 0), 2
            rest_vs_half = -1 if mantissa else 0
        else:
            whole = mantissa >> drop
            rest = mantissa & ((1 << drop) - 1)
            half = 1 << (drop - 1)
            rest_vs_half = (rest > half) - (rest < half)
        value = whole
        if rest:
            if rounding == 0:
                if rest_vs_half > 0 or (rest_vs_half == 0 and whole & 1):
                    value += 1
            elif rounding == 1 and negative:
                value += 1
            elif rounding == 2 and not negative:
                value += 1
    if negative:
        value = -value
    if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
        return None
    return value


def f80_round_to_float(raw: int, rounding: int) -> float:
    """FRNDINT on the float model: round to an integral value by ``rounding``."""
    value = f80_to_float(raw)
    if math.isnan(value) or math.isinf(value):
        return value
    if rounding == 0:
        result = float(round(value))
    elif rounding == 1:
        result = float(math.floor(value))
    elif rounding == 2:
        result = float(math.ceil(value))
    else:
        result = float(math.trunc(value))
    return math.copysign(result, value) if result == 0.0 else result


def float_to_f32_bits(value: float) -> int:
    try:
        return struct.unpack("<I", struct.pack("<f", value))[0]
    except OverflowError:
        return 0xFF80_0000 if value < 0 else 0x7F80_0000


def f32_bits_to_float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFF_FFFF))[0]


def float_to_f64_bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def f64_bits_to_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits & MASK64))[0]


# --- FXSAVE / FXRSTOR -----------------------------------------------------------------------
def fxsave_image(x87: X87State, mxcsr: int, xmm: List[int], xmm_count: int) -> bytes:
    """The 512-byte FXSAVE area for this state (64-bit layout: FIP and FDP are 64-bit)."""
    area = bytearray(FX_SIZE)
    struct.pack_into("<HHBxHQQII", area, 0, x87.fcw, x87.status_word, x87.tags, x87.fop,
                     x87.fip & MASK64, x87.fdp & MASK64, mxcsr, MXCSR_MASK)
    for n in range(8):
        raw = x87.st[(x87.top + n) & 7]
        area[FX_ST0 + 16 * n:FX_ST0 + 16 * n + 10] = raw.to_bytes(10, "little")
    for n in range(xmm_count):
        area[FX_XMM0 + 16 * n:FX_XMM0 + 16 * n + 16] = xmm[n].to_bytes(16, "little")
    return bytes(area)


def fxrstor_image(x87: X87State, area: bytes, xmm: List[int], xmm_count: int) -> int:
    """Load x87 and XMM state from a 512-byte FXSAVE area; returns the new MXCSR.

    The caller checks MXCSR against :data:`MXCSR_MASK` first (#GP), so nothing changes then.
    """
    fcw, fsw, tags, fop, fip, fdp, mxcsr = struct.unpack_from("<HHBxHQQI", area, 0)
    x87.fcw = fcw
    x87.tags = tags
    x87.fop = fop & 0x7FF
    x87.fip = fip
    x87.fdp = fdp
    x87.set_status_word(fsw)
    for n in range(8):
        raw = int.from_bytes(area[FX_ST0 + 16 * n:FX_ST0 + 16 * n + 10], "little")
        x87.st[(x87.top + n) & 7] = raw
    for n in range(xmm_count):
        xmm[n] = int.from_bytes(area[FX_XMM0 + 16 * n:FX_XMM0 + 16 * n + 16], "little")
    return mxcsr

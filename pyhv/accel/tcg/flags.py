"""Lazy arithmetic flags.

An ALU instruction records only what it did (``cc_op``), its operand size and its operands
and result; CF/PF/AF/ZF/SF/OF are computed when something reads them (a jcc, pushf, adc).
Most results are never looked at, so most instructions pay for one tuple of stores.
Operations whose flags do not fit one of the lazy kinds (shifts, rotates, mul, bit ops)
compute all six flags at once and store them with ``CC_EAGER``.

64-bit operands and results come in either form: unsigned from the interpreter, signed
(the register form, see :mod:`.state`) from the translated blocks. At 8 bytes the readers
fold all three to signed machine words first (:func:`_operands64`) and test them with word
masks: on PyPy a mask of 2**64-1 or 2**63 makes every operation a long-integer call, and a
64-bit cmp/jcc pair is among the interpreter's commonest (3.6 million in the Debian boot).
An unsigned order is the signed order of the values with their sign bits flipped.
"""

from __future__ import annotations

from .state import AF, ARITH_FLAGS, CF, OF, PF, RFLAGS_FIXED, SF, ZF, CpuState, signed64

CC_EAGER = 0  # arithmetic flags live in state.rflags
CC_ADD = 1  # res = a + b
CC_SUB = 2  # res = a - b
CC_LOGIC = 3  # res = a op b, CF = OF = AF = 0
CC_INC = 4  # res = a + 1, CF kept in cc_cf
CC_DEC = 5  # res = a - 1, CF kept in cc_cf
CC_ADC = 6  # res = a + b + cc_cf
CC_SBB = 7  # res = a - b - cc_cf

# The masks below 8 bytes; 64-bit operands go through _operands64 instead.
SIZE_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF}
SIGN_BIT = {1: 0x80, 2: 0x8000, 4: 0x8000_0000}
SIGN64 = signed64(1 << 63)  # -2**63: bit 63 of a signed word, a machine word on PyPy
MAX64 = (1 << 63) - 1
# PF is set when the low byte of the result has an even number of one bits.
PARITY = tuple(PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256))


def _operands64(s: CpuState):
    """The 64-bit lazy operands and result as signed machine words, whatever their form."""
    return signed64(s.cc_a), signed64(s.cc_b), signed64(s.cc_res)


def _ordered_operands(s: CpuState):
    """The lazy operands and result, ordered as the unsigned values they stand for."""
    if s.cc_size == 8:
        a, b, res = _operands64(s)
        return a ^ SIGN64, b ^ SIGN64, res ^ SIGN64
    return s.cc_a, s.cc_b, s.cc_res


def get_cf(s: CpuState) -> int:
    op = s.cc_op
    if op == CC_LOGIC:
        return 0
    if op == CC_EAGER:
        return s.rflags & CF
    if op == CC_INC or op == CC_DEC:
        return s.cc_cf
    a, b, res = _ordered_operands(s)
    if op == CC_SUB:
        return 1 if a < b else 0
    if op == CC_ADD:
        return 1 if res < a else 0
    if op == CC_ADC:
        return 1 if (res < a or (s.cc_cf and res == a)) else 0
    # CC_SBB
    return 1 if (a < b or (s.cc_cf and a == b)) else 0


def get_zf(s: CpuState) -> int:
    if s.cc_op == CC_EAGER:
        return 1 if s.rflags & ZF else 0
    return 1 if s.cc_res == 0 else 0


def get_sf(s: CpuState) -> int:
    if s.cc_op == CC_EAGER:
        return 1 if s.rflags & SF else 0
    return 1 if _negative(s) else 0


def _negative(s: CpuState) -> bool:
    """The lazy result's sign bit."""
    if s.cc_size == 8:
        return signed64(s.cc_res) < 0
    return bool(s.cc_res & SIGN_BIT[s.cc_size])


def get_pf(s: CpuState) -> int:
    if s.cc_op == CC_EAGER:
        return 1 if s.rflags & PF else 0
    return 1 if PARITY[s.cc_res & 0xFF] else 0


def get_of(s: CpuState) -> int:
    op = s.cc_op
    if op == CC_EAGER:
        return 1 if s.rflags & OF else 0
    if s.cc_size == 8:
        a, b, res = _operands64(s)
        sign, low, high = SIGN64, SIGN64, MAX64
    else:
        a, b, res = s.cc_a, s.cc_b, s.cc_res
        sign = SIGN_BIT[s.cc_size]
        res &= SIZE_MASK[s.cc_size]
        low, high = sign, sign - 1
    if op == CC_SUB or op == CC_SBB:
        return 1 if (a ^ b) & (a ^ res) & sign else 0
    if op == CC_ADD or op == CC_ADC:
        return 1 if (a ^ res) & (b ^ res) & sign else 0
    if op == CC_INC:  # overflow: the largest positive value became the smallest negative one
        return 1 if res == low else 0
    if op == CC_DEC:
        return 1 if res == high else 0
    return 0


def get_af(s: CpuState) -> int:
    op = s.cc_op
    if op == CC_EAGER:
        return 1 if s.rflags & AF else 0
    if op == CC_LOGIC:
        return 0
    return 1 if (s.cc_a ^ s.cc_b ^ s.cc_res) & 0x10 else 0


def arith_flags(s: CpuState) -> int:
    """The six arithmetic flags as RFLAGS bits."""
    if s.cc_op == CC_EAGER:
        return s.rflags & ARITH_FLAGS
    res = s.cc_res
    bits = PARITY[res & 0xFF]
    if res == 0:
        bits |= ZF
    if _negative(s):
        bits |= SF
    if get_cf(s):
        bits |= CF
    if get_of(s):
        bits |= OF
    if get_af(s):
        bits |= AF
    return bits


def read_rflags(s: CpuState) -> int:
    return (s.rflags & ~ARITH_FLAGS) | arith_flags(s) | RFLAGS_FIXED


def write_rflags(s: CpuState, value: int) -> None:
    # signed64: a machine integer on PyPy even where ``value`` came through a long (a popf
    # of a value with bit 63 set); RFLAGS would stay a long through every update after.
    s.rflags = signed64(value | RFLAGS_FIXED)
    s.cc_op = CC_EAGER


def materialize(s: CpuState) -> None:
    """Fold the lazy flags into state.rflags (before an instruction changes only some)."""
    if s.cc_op != CC_EAGER:
        s.rflags = (s.rflags & ~ARITH_FLAGS) | arith_flags(s)
        s.cc_op = CC_EAGER


def set_eager(s: CpuState, size: int, res: int, cf: int, of: int, af: int = 0) -> None:
    """Flags from a result (ZF/SF/PF) plus explicit CF/OF/AF, as shifts and multiplies set them."""
    bits = PARITY[res & 0xFF]
    if res == 0:
        bits |= ZF
    if (res >> (8 * size - 1)) & 1:  # not SIGN_BIT[8], a long integer on PyPy
        bits |= SF
    if cf:
        bits |= CF
    if of:
        bits |= OF
    if af:
        bits |= AF
    s.rflags = (s.rflags & ~ARITH_FLAGS) | bits
    s.cc_op = CC_EAGER


def condition(s: CpuState, cc: int) -> bool:
    """Evaluate condition code ``cc`` (0..15, the low nibble of jcc/setcc/cmovcc)."""
    op = s.cc_op
    if op == CC_SUB:
        # The common cmp/jcc pair, straight from the operands.
        base = cc >> 1
        if s.cc_size == 8:
            a, b = signed64(s.cc_a), signed64(s.cc_b)
            if base == 2:  # e / ne
                r = a == b
            elif base == 1:  # b / ae
                r = (a ^ SIGN64) < (b ^ SIGN64)
            elif base == 3:  # be / a
                r = (a ^ SIGN64) <= (b ^ SIGN64)
            elif base == 6:  # l / ge
                r = a < b
            elif base == 7:  # le / g
                r = a <= b
            else:
                return _condition_generic(s, cc)
            return (not r) if cc & 1 else r
        a, b = s.cc_a, s.cc_b
        if base == 2:  # e / ne
            r = a == b
        elif base == 1:  # b / ae
            r = a < b
        elif base == 3:  # be / a
            r = a <= b
        elif base == 6 or base == 7:  # l / ge, le / g
            sign = SIGN_BIT[s.cc_size]
            sa = a - ((a & sign) << 1)
            sb = b - ((b & sign) << 1)
            r = sa < sb if base == 6 else sa <= sb
        else:
            return _condition_generic(s, cc)
        return (not r) if cc & 1 else r
    return _condition_generic(s, cc)


def _condition_generic(s: CpuState, cc: int) -> bool:
    base = cc >> 1
    if base == 0:
        r = get_of(s)
    elif base == 1:
        r = get_cf(s)
    elif base == 2:
        r = get_zf(s)
    elif base == 3:
        r = get_cf(s) or get_zf(s)
    elif base == 4:
        r = get_sf(s)
    elif base == 5:
        r = get_pf(s)
    elif base == 6:
        r = get_sf(s) != get_of(s)
    else:
        r = get_zf(s) or (get_sf(s) != get_of(s))
    r = bool(r)
    return (not r) if cc & 1 else r

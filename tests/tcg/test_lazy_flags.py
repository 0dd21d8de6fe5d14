"""The lazy flags read back at every operand size, with 64-bit values in either form.

At 8 bytes the interpreter records operands unsigned or in the registers' signed form (see
pyhv.accel.tcg.state), and the translated blocks record them signed; the readers in
pyhv.accel.tcg.flags must give the same flags for both, and for a mix of the two. The
expected flags come from plain integer arithmetic on the unsigned values.
"""

from __future__ import annotations

import random
from typing import Dict, Iterator, Tuple

import pytest

from pyhv.accel.tcg.flags import (CC_ADD, CC_DEC, CC_INC, CC_SUB, arith_flags, condition,
                                  get_cf, get_of, get_sf)
from pyhv.accel.tcg.state import AF, CF, OF, PF, SF, ZF, CpuState, signed64

# Values around every edge a sign, carry or overflow test has.
EDGES = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000,
         0xFFFF_FFFF, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, 0x8000_0000_0000_0001,
         0xFFFF_FFFF_FFFF_FFFE, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_8100_0000)


def _operand_pairs(size: int) -> Iterator[Tuple[int, int]]:
    mask = (1 << (8 * size)) - 1
    values = sorted({v & mask for v in EDGES})
    for a in values:
        for b in values:
            yield a, b
    rng = random.Random(size)
    for _ in range(300):
        yield rng.getrandbits(8 * size), rng.getrandbits(8 * size)


def _expected(op: int, size: int, a: int, b: int) -> Tuple[int, Dict[str, bool]]:
    bits = 8 * size
    mask = (1 << bits) - 1
    if op == CC_SUB:
        res = (a - b) & mask
        cf = a < b
        of = ((a ^ b) & (a ^ res)) >> (bits - 1) & 1
    elif op == CC_ADD:
        res = (a + b) & mask
        cf = a + b > mask
        of = ((a ^ res) & (b ^ res)) >> (bits - 1) & 1
    elif op == CC_INC:
        res = (a + 1) & mask
        cf = False  # inc keeps CF: cc_cf is 0 below
        of = res == 1 << (bits - 1)
    else:
        res = (a - 1) & mask
        cf = False
        of = res == (1 << (bits - 1)) - 1
    sf = res >> (bits - 1)
    flags = {"cf": bool(cf), "zf": res == 0, "sf": bool(sf), "of": bool(of),
             "pf": bin(res & 0xFF).count("1") % 2 == 0}
    return res, flags


def _conditions(f: Dict[str, bool]) -> Tuple[bool, ...]:
    """Jcc conditions 0..15 (o, no, b, ae, e, ne, be, a, s, ns, p, np, l, ge, le, g)."""
    bases = (f["of"], f["cf"], f["zf"], f["cf"] or f["zf"], f["sf"], f["pf"],
             f["sf"] != f["of"], f["zf"] or f["sf"] != f["of"])
    return tuple(not bases[cc >> 1] if cc & 1 else bases[cc >> 1] for cc in range(16))


def _state(op: int, size: int, a: int, b: int, res: int, form: str) -> CpuState:
    """A CpuState holding the lazy flags of ``op``; ``form`` gives a, b and res each as
    u (unsigned) or s (the signed register form), which only 8-byte values have."""
    s = CpuState()
    s.cc_op, s.cc_size, s.cc_cf = op, size, 0
    a, b, res = ((signed64(v) if f == "s" else v) for v, f in zip((a, b, res), form))
    s.cc_a, s.cc_b, s.cc_res = a, b, res
    return s


@pytest.mark.parametrize("op", [CC_SUB, CC_ADD, CC_INC, CC_DEC], ids=["sub", "add", "inc", "dec"])
@pytest.mark.parametrize("size, form", [(1, "uuu"), (2, "uuu"), (4, "uuu"), (8, "uuu"), (8, "sss"),
                                        (8, "uus"), (8, "sus"), (8, "usu")])
def test_flags_and_conditions_match_plain_arithmetic(op: int, size: int, form: str) -> None:
    for a, b in _operand_pairs(size):
        if op in (CC_INC, CC_DEC):
            b = 1
        res, want = _expected(op, size, a, b)
        s = _state(op, size, a, b, res, form)
        where = f"a={a:#x} b={b:#x} size={size} form={form}"
        assert bool(get_cf(s)) == want["cf"], where
        assert bool(get_of(s)) == want["of"], where
        assert bool(get_sf(s)) == want["sf"], where
        got = arith_flags(s)
        assert bool(got & ZF) == want["zf"] and bool(got & SF) == want["sf"], where
        assert bool(got & CF) == want["cf"] and bool(got & OF) == want["of"], where
        assert bool(got & PF) == want["pf"], where
        assert bool(got & AF) == bool((a ^ b ^ res) & 0x10), where
        assert tuple(condition(s, cc) for cc in range(16)) == _conditions(want), where

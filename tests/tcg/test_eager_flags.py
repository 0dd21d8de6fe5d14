"""ZF, SF, PF and CF of shifts, which the translator computes at once (not lazily).

On PyPy the translator writes them without tests on the result (see
``BlockGen.zero_bit``/``sign_bit``), so each operand size is checked at the values where such
arithmetic goes wrong: a zero result, the sign bit alone, the 64-bit minimum.
"""

from __future__ import annotations

import pytest

from tests.tcg.harness import assemble, needs_as
from tests.tcg.test_translate import _run

pytestmark = needs_as

CF, PF, ZF, SF = 0x1, 0x4, 0x40, 0x80
SIZES = {1: "%al", 2: "%ax", 4: "%eax", 8: "%rax"}


def _expected(op: str, value: int, size: int) -> int:
    bits = 8 * size
    mask = (1 << bits) - 1
    if op == "shl":
        result, carry = (value << 1) & mask, value >> (bits - 1) & 1
    elif op == "shr":
        result, carry = value >> 1, value & 1
    else:  # sar
        result, carry = (value >> 1) | (value & (1 << (bits - 1))), value & 1
    parity = PF if bin(result & 0xFF).count("1") % 2 == 0 else 0
    return (ZF if result == 0 else 0) | (SF if result >> (bits - 1) else 0) | parity | (CF if carry else 0)


CASES = [(op, size, value) for size in SIZES for op, value in (
    ("shl", 1 << (8 * size - 2)),  # the sign bit alone (at 8 bytes: the minimum)
    ("shl", 1 << (8 * size - 1)),  # zero, with a carry
    ("shr", 1),                    # zero, with a carry
    ("shr", (1 << 8 * size) - 1),  # ordinary
    ("sar", 1 << (8 * size - 1)),  # stays negative
    ("shl", 0x5A),
)]


@pytest.mark.parametrize("translate_after", [None, 0])
@pytest.mark.parametrize("op, size, value", CASES)
def test_shift_by_one_sets_zf_sf_pf_cf(op, size, value, translate_after):
    reg = SIZES[size]
    code = assemble(f"""
        {op} $1, {reg}
        pushf
        pop %rbx
        hlt
    """)
    _memory, cpu, result = _run(code, {"rax": value}, translate_after)
    assert result.reason == "hlt"
    assert cpu.registers()["rbx"] & (CF | PF | ZF | SF) == _expected(op, value, size)

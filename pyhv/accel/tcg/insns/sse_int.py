"""SSE2 packed-integer arithmetic on XMM registers: logic, add/sub (wrapping and saturating),
compares, min/max, averages, multiplies, shifts and packs (66 0F 60-76, D1-FE).

Each opcode maps to one lane function in :data:`LANE_OPS`; the handler splits the two
operands into lanes, applies it and joins the result. MMX forms (no 66 prefix) raise #UD.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from ..decoder import IMM_B, Insn, register
from ..faults import UD, GuestFault
from .sse import MASK128, P66, check, join, lanes, prefix, signed_lanes, src128

MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def _saturate(value: int, low: int, high: int) -> int:
    return low if value < low else high if value > high else value


def _wrap(width: int, fn: Callable[[int, int], int]) -> Tuple[int, bool, Callable]:
    return width, False, fn


def _signed(width: int, fn: Callable[[int, int], int]) -> Tuple[int, bool, Callable]:
    return width, True, fn


_S = {1: (-0x80, 0x7F), 2: (-0x8000, 0x7FFF)}
_U = {1: 0xFF, 2: 0xFFFF}
_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: MASK64}

# opcode -> (lane width, signed lanes?, fn(a, b) -> lane result, masked by the caller)
LANE_OPS: Dict[int, Tuple[int, bool, Callable[[int, int], int]]] = {
    0x1FC: _wrap(1, lambda a, b: a + b), 0x1FD: _wrap(2, lambda a, b: a + b),
    0x1FE: _wrap(4, lambda a, b: a + b), 0x1D4: _wrap(8, lambda a, b: a + b),
    0x1F8: _wrap(1, lambda a, b: a - b), 0x1F9: _wrap(2, lambda a, b: a - b),
    0x1FA: _wrap(4, lambda a, b: a - b), 0x1FB: _wrap(8, lambda a, b: a - b),
    0x1EC: _signed(1, lambda a, b: _saturate(a + b, *_S[1])),
    0x1ED: _signed(2, lambda a, b: _saturate(a + b, *_S[2])),
    0x1E8: _signed(1, lambda a, b: _saturate(a - b, *_S[1])),
    0x1E9: _signed(2, lambda a, b: _saturate(a - b, *_S[2])),
    0x1DC: _wrap(1, lambda a, b: min(a + b, 0xFF)), 0x1DD: _wrap(2, lambda a, b: min(a + b, 0xFFFF)),
    0x1D8: _wrap(1, lambda a, b: max(a - b, 0)), 0x1D9: _wrap(2, lambda a, b: max(a - b, 0)),
    0x174: _wrap(1, lambda a, b: 0xFF if a == b else 0),
    0x175: _wrap(2, lambda a, b: 0xFFFF if a == b else 0),
    0x176: _wrap(4, lambda a, b: 0xFFFF_FFFF if a == b else 0),
    0x164: _signed(1, lambda a, b: -1 if a > b else 0),
    0x165: _signed(2, lambda a, b: -1 if a > b else 0),
    0x166: _signed(4, lambda a, b: -1 if a > b else 0),
    0x1DA: _wrap(1, min), 0x1DE: _wrap(1, max),
    0x1EA: _signed(2, min), 0x1EE: _signed(2, max),
    0x1E0: _wrap(1, lambda a, b: (a + b + 1) >> 1), 0x1E3: _wrap(2, lambda a, b: (a + b + 1) >> 1),
    0x1D5: _wrap(2, lambda a, b: a * b),
    0x1E5: _signed(2, lambda a, b: (a * b) >> 16),
    0x1E4: _wrap(2, lambda a, b: (a * b) >> 16),
}
_LOGIC = {0x1DB: lambda a, b: a & b, 0x1EB: lambda a, b: a | b, 0x1EF: lambda a, b: a ^ b,
          0x1DF: lambda a, b: ~a & b & MASK128}


def lane_op(cpu, i: Insn) -> None:
    check(cpu)
    if prefix(i) != P66:
        raise GuestFault(UD)  # MMX register forms are not implemented
    s = cpu.s
    op = i.op
    a, b = s.xmm[i.reg], src128(cpu, i)
    logic = _LOGIC.get(op)
    if logic is not None:
        s.xmm[i.reg] = logic(a, b)
        return
    width, signed, fn = LANE_OPS[op]
    split = signed_lanes if signed else lanes
    s.xmm[i.reg] = join([fn(x, y) for x, y in zip(split(a, width), split(b, width))], width)


def _multiply_add(cpu, i: Insn) -> None:
    """66 0F F5 pmaddwd: adjacent signed word products summed into dwords."""
    s = cpu.s
    a, b = signed_lanes(s.xmm[i.reg], 2), signed_lanes(src128(cpu, i), 2)
    s.xmm[i.reg] = join([a[2 * n] * b[2 * n] + a[2 * n + 1] * b[2 * n + 1] for n in range(4)], 4)


def _multiply_unsigned_dq(cpu, i: Insn) -> None:
    """66 0F F4 pmuludq: the even unsigned dwords multiplied into qwords."""
    s = cpu.s
    a, b = lanes(s.xmm[i.reg], 4), lanes(src128(cpu, i), 4)
    s.xmm[i.reg] = join([a[0] * b[0], a[2] * b[2]], 8)


def _sum_abs_diff(cpu, i: Insn) -> None:
    """66 0F F6 psadbw: per 8-byte half, the sum of absolute byte differences."""
    s = cpu.s
    a, b = lanes(s.xmm[i.reg], 1), lanes(src128(cpu, i), 1)
    low = sum(abs(a[n] - b[n]) for n in range(8))
    high = sum(abs(a[n] - b[n]) for n in range(8, 16))
    s.xmm[i.reg] = low | (high << 64)


def _pack(cpu, i: Insn) -> None:
    """66 0F 63 packsswb, 67 packuswb, 6B packssdw: narrow with saturation, dest then source."""
    s = cpu.s
    op = i.op
    width = 4 if op == 0x16B else 2
    values: List[int] = list(signed_lanes(s.xmm[i.reg], width)) + list(signed_lanes(src128(cpu, i), width))
    if op == 0x167:
        s.xmm[i.reg] = join([_saturate(v, 0, 0xFF) for v in values], 1)
    else:
        low, high = _S[width // 2]
        s.xmm[i.reg] = join([_saturate(v, low, high) for v in values], width // 2)


_SPECIAL = {0x1F5: _multiply_add, 0x1F4: _multiply_unsigned_dq, 0x1F6: _sum_abs_diff,
            0x163: _pack, 0x167: _pack, 0x16B: _pack}


def special_op(cpu, i: Insn) -> None:
    check(cpu)
    if prefix(i) != P66:
        raise GuestFault(UD)
    _SPECIAL[i.op](cpu, i)


# --- shifts ------------------------------------------------------------------------------------
# (kind, width): kind 0 logical right, 1 arithmetic right, 2 left.
_SHIFT_BY_XMM = {0x1D1: (0, 2), 0x1D2: (0, 4), 0x1D3: (0, 8), 0x1E1: (1, 2), 0x1E2: (1, 4),
                 0x1F1: (2, 2), 0x1F2: (2, 4), 0x1F3: (2, 8)}
_SHIFT_GROUP = {(0x171, 2): (0, 2), (0x171, 4): (1, 2), (0x171, 6): (2, 2),
                (0x172, 2): (0, 4), (0x172, 4): (1, 4), (0x172, 6): (2, 4)}


def _shift(value: int, kind: int, width: int, count: int) -> int:
    bits = 8 * width
    if kind == 1:
        count = min(count, bits - 1)
        return join([v >> count for v in signed_lanes(value, width)], width)
    if count >= bits:
        return 0
    if kind == 0:
        return join([v >> count for v in lanes(value, width)], width)
    return join([v << count for v in lanes(value, width)], width)


def shift_by_xmm(cpu, i: Insn) -> None:
    """66 0F D1-D3, E1-E2, F1-F3: shift every lane by the low quadword of xmm/m128."""
    check(cpu)
    if prefix(i) != P66:
        raise GuestFault(UD)
    s = cpu.s
    kind, width = _SHIFT_BY_XMM[i.op]
    s.xmm[i.reg] = _shift(s.xmm[i.reg], kind, width, src128(cpu, i) & MASK64)


def shift_by_imm(cpu, i: Insn) -> None:
    """66 0F 71/72 /2 /4 /6: shift the lanes of an XMM register by an immediate."""
    check(cpu)
    if prefix(i) != P66 or i.is_mem:
        raise GuestFault(UD)
    s = cpu.s
    kind, width = _SHIFT_GROUP[(i.op, i.raw_reg)]
    s.xmm[i.rm] = _shift(s.xmm[i.rm], kind, width, i.imm)


def _register() -> None:
    for op in list(LANE_OPS) + list(_LOGIC):
        register(op, lane_op, modrm=True)
    for op in _SPECIAL:
        register(op, special_op, modrm=True)
    for op in _SHIFT_BY_XMM:
        register(op, shift_by_xmm, modrm=True)
    for op, reg in _SHIFT_GROUP:
        register(op, shift_by_imm, reg=reg, imm=IMM_B)


_register()

"""Random operands for snippets: register names, edge-biased values, memory operands.

A :class:`SnippetBuilder` holds the initial register file and memory patches of one
snippet while its instruction is put together, so that a memory operand's base and index
registers get values that land the access where the generator wants it: inside a data
page, across the boundary between the two data pages, across into the absent guard page,
on the read-only page, on the stack, or at a non-canonical address.
"""

from __future__ import annotations

import random
from typing import Dict, List, Optional, Set, Tuple

from .layout import DATA, DATA_RO, DATA_SIZE, GUARD, PAGE, STACK_TOP

RSP = 4
REG64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
REG32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
         "r8d", "r9d", "r10d", "r11d", "r12d", "r13d", "r14d", "r15d")
REG16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di",
         "r8w", "r9w", "r10w", "r11w", "r12w", "r13w", "r14w", "r15w")
REG8 = ("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil",
        "r8b", "r9b", "r10b", "r11b", "r12b", "r13b", "r14b", "r15b")
HIGH8 = ("ah", "ch", "dh", "bh")  # registers 0-3, bits 8-15; unusable with any REX prefix
NAMES = {8: REG64, 4: REG32, 2: REG16, 1: REG8}
SUFFIX = {1: "b", 2: "w", 4: "l", 8: "q"}
MASK64 = (1 << 64) - 1

# Where a memory operand lands, with weights.
TARGETS = (("data", 62), ("split", 10), ("ro", 6), ("stack", 8), ("guard-split", 5),
           ("guard", 3), ("noncanonical", 3), ("ro-split", 3))


def edge_value(rng: random.Random, size: int) -> int:
    """A ``size``-byte value, biased to 0, ±1, the sign boundary, width-1 and the like."""
    bits = size * 8
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    choice = rng.random()
    if choice < 0.55:
        return rng.choice((0, 1, 2, mask, mask - 1, sign, sign - 1, sign + 1, bits - 1, bits,
                           bits + 1, 0x55 * (mask // 0xFF), 0xAA * (mask // 0xFF), 0x80, 0x7F,
                           0xFF, 0x100, 0xFFFF, 0x8000, 0xFFFF_FFFF, 0x8000_0000)) & mask
    if choice < 0.7:
        return rng.getrandbits(rng.randint(1, bits))
    return rng.getrandbits(bits)


def register_value(rng: random.Random, size: int) -> int:
    """A 64-bit register whose low ``size`` bytes are edge-biased and the rest random."""
    low = edge_value(rng, size)
    if size == 8 or rng.random() < 0.2:
        return low
    return (rng.getrandbits(64) & ~((1 << (size * 8)) - 1) & MASK64) | low


class MemoryOperand:
    """An AT&T memory operand and the linear address it resolves to."""

    def __init__(self, text: str, address: int, kind: str) -> None:
        self.text = text
        self.address = address
        self.kind = kind


class SnippetBuilder:
    """Initial state of one snippet: 16 registers, RFLAGS, memory patches."""

    def __init__(self, rng: random.Random, legacy_bytes: bool = False) -> None:
        self.rng = rng
        self.regs: List[int] = [register_value(rng, rng.choice((1, 2, 4, 8))) for _ in range(16)]
        self.regs[RSP] = STACK_TOP + rng.randrange(-64, 65)
        self.fixed: Set[int] = {RSP}  # registers whose value an operand depends on
        self.patches: List[Tuple[int, bytes]] = []
        # ah/ch/dh/bh need an instruction without REX: registers 8-15 and spl..dil are out.
        self.legacy_bytes = legacy_bytes
        self.rflags = 0x2 | (rng.getrandbits(12) & 0x8D5)

    # --- registers ----------------------------------------------------------------------
    def pick(self, allow_rsp: bool = True, exclude: Tuple[int, ...] = ()) -> int:
        """A register number not already holding an address."""
        limit = 8 if self.legacy_bytes else 16
        while True:
            n = self.rng.randrange(limit)
            if n in exclude or (n in self.fixed and (n != RSP or not allow_rsp)):
                continue
            return n

    def reg(self, size: int, value: Optional[int] = None, exclude: Tuple[int, ...] = ()) -> str:
        """A register operand of ``size`` bytes, with an edge-biased (or given) value."""
        if size == 1 and self.legacy_bytes:
            # Without REX, byte registers 4-7 are ah, ch, dh, bh: bits 8-15 of registers 0-3.
            n = self.pick(allow_rsp=True, exclude=exclude + tuple(r + 4 for r in self.fixed if r < 4)
                          + tuple(r + 4 for r in exclude if r < 4))
            byte = edge_value(self.rng, 1) if value is None else value & 0xFF
            if n >= 4:
                self.regs[n - 4] = self._with_low(n - 4, byte << 8, 0xFF00)
                return "%" + HIGH8[n - 4]
            self.regs[n] = self._with_low(n, byte, 0xFF)
            return "%" + NAMES[1][n]
        n = self.pick(allow_rsp=False, exclude=exclude)
        self.set(n, size, register_value(self.rng, size) if value is None else value)
        return "%" + NAMES[size][n]

    def set(self, n: int, size: int, value: int) -> None:
        mask = (1 << (size * 8)) - 1
        self.regs[n] = self._with_low(n, value & mask, mask)

    def _with_low(self, n: int, value: int, mask: int) -> int:
        return (self.regs[n] & ~mask & MASK64) | value

    def fix(self, n: int, value: int) -> None:
        self.regs[n] = value & MASK64
        self.fixed.add(n)

    # --- memory -------------------------------------------------------------------------
    def target(self, size: int, kind: str = "") -> Tuple[int, str]:
        """An address for a ``size``-byte access, by kind (random when not given)."""
        rng = self.rng
        if not kind:
            kind = rng.choices([k for k, _ in TARGETS], [w for _, w in TARGETS])[0]
        if kind == "data":
            return DATA + rng.randrange(DATA_SIZE - size + 1), kind
        if kind == "split":
            return DATA + PAGE - rng.randrange(1, size) if size > 1 else DATA + PAGE - 1, kind
        if kind == "ro":
            return DATA_RO + rng.randrange(PAGE - size + 1), kind
        if kind == "ro-split":
            return DATA - rng.randrange(1, size) if size > 1 else DATA - 1, kind
        if kind == "stack":
            return (self.regs[RSP] + rng.randrange(-48, 48)) & MASK64, kind
        if kind == "guard-split":
            return GUARD - rng.randrange(1, size) if size > 1 else GUARD - 1, kind
        if kind == "guard":
            return GUARD + rng.randrange(PAGE - size + 1), kind
        high = rng.choice((0x8000_0000_0000_0000, 0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_F000))
        return high + rng.randrange(PAGE), "noncanonical"

    def mem(self, size: int, kind: str = "", value: Optional[int] = None,
            allow_addr32: bool = True) -> MemoryOperand:
        """A memory operand for a ``size``-byte access; plants an edge value (or ``value``)."""
        rng = self.rng
        address, kind = self.target(size, kind)
        if kind in ("data", "split", "ro", "ro-split", "stack") and (value is not None or rng.random() < 0.7):
            planted = edge_value(rng, size) if value is None else value
            self.patches.append((address, planted.to_bytes(size, "little")))
        addr32 = allow_addr32 and kind != "noncanonical" and rng.random() < 0.1
        form = rng.random()
        if kind == "stack" and form < 0.5:
            disp = address - self.regs[RSP]
            text = f"{disp}(%rsp)" if disp else "(%rsp)"
            if addr32:
                text = f"{disp}(%esp)" if disp else "(%esp)"
            return MemoryOperand(text, address, kind)
        if form < 0.1 and kind != "noncanonical":
            return MemoryOperand(f"{address:#x}", address, kind)  # absolute disp32 (SIB, no base)
        disp = rng.choice((0, rng.randrange(-128, 128), rng.randrange(-0x8000_0000, 0x8000_0000)))
        names = REG32 if addr32 else REG64
        width_mask = 0xFFFF_FFFF if addr32 else MASK64
        base = self.pick(allow_rsp=False)
        self.fixed.add(base)
        if form < 0.55:
            value_of_base = (address - disp) & width_mask
            self._place(base, value_of_base, addr32)
            return MemoryOperand(f"{disp}(%{names[base]})", address, kind)
        index = self.pick(allow_rsp=False)
        self.fixed.add(index)
        scale = rng.choice((1, 2, 4, 8))
        index_value = rng.choice((0, rng.randrange(-64, 64), rng.getrandbits(32), rng.getrandbits(64)))
        self._place(index, index_value & width_mask, addr32)
        self._place(base, (address - disp - index_value * scale) & width_mask, addr32)
        return MemoryOperand(f"{disp}(%{names[base]},%{names[index]},{scale})", address, kind)

    def _place(self, n: int, value: int, addr32: bool) -> None:
        if addr32:
            value |= self.rng.getrandbits(32) << 32  # the upper half must not matter
        self.regs[n] = value & MASK64

    def gprs(self) -> Dict[str, int]:
        return {name: self.regs[n] for n, name in enumerate(REG64)}

"""Block translator: each decoded basic block becomes one generated Python function.

The function holds the guest registers it touches in locals (``r0`` … ``r15``), loaded at
entry and stored back at every exit. Arithmetic flags stay lazy and are resolved at
translation time: a flag-setting instruction ``k`` leaves its operands and result in locals
``fa<k>``/``fb<k>``/``fr<k>`` (``fc<k>``: the carry kept by inc/dec), and a consumer
(jcc, setcc, cmovcc) that follows in the same block reads an expression specialised for
that operation and size (``cmp; jne`` becomes ``fa3 != fb3``). Only at an exit are the
lazy flags written to ``CpuState.cc_*`` (see :mod:`.flags`). Immediates, displacements
and RIP-relative addresses are folded into the source as constants.

64-bit values are in the signed register form of :mod:`.state` throughout (locals,
constants, memory loads), so that the kernel's pointers stay machine integers on PyPy. A
64-bit result that may leave that range is folded back: on PyPy with ``__pypy__.intop``'s
wrapping operations, on CPython with a range test (:meth:`BlockCodegen.arith64`); unsigned
comparisons also compare the signs (:meth:`BlockCodegen.below`).

Memory goes through a fast path: the MMU's per-access-kind TLB dicts (``mmu.r``/``mmu.w``)
give what to add to the linear address for the physical one; a hit inside low RAM reads or
writes the RAM directly (through typed views of it on CPython, see TYPED_VIEWS), anything else
calls ``mmu.read``/``mmu.write`` (page walk, page-crossing, MMIO, writes to pages holding
translated code, which invalidate blocks and end this one). Within a block, an access through
the same register as an earlier one (a push after a push, a field after a field) skips the
lookup when it stays in that one's page: a page hint (:meth:`BlockCodegen._hint_test`). The
store of a read-modify-write goes where its read went.

An instruction without a translator is run by its interpreter handler in place: the
registers and flags are stored to ``CpuState``, the handler runs, and the locals are
reloaded. So coverage grows family by family (see :mod:`.translate_insns`).

Faults are precise. Every instruction does its memory accesses before it commits anything
to the locals; before an instruction that can fault the function records its index in
``pc``, and the ``except GuestFault`` clause stores the locals and the flags as they were
before that instruction, sets RIP to it and tells the run loop how many instructions retired.
"""

from __future__ import annotations

import re
import struct
import sys
import time
import types
from types import CodeType
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from ...runtime_env import ON_PYPY
from .codecache import CodeCache
from .compiler import CompileHelper, compile_block
from .decoder import END, Insn
from .faults import GuestFault
from .flagprune import prune_flag_locals
from .flags import (CC_ADC, CC_ADD, CC_DEC, CC_EAGER, CC_INC, CC_LOGIC, CC_SBB, CC_SUB, PARITY,
                    condition, get_cf, materialize)
from .insns.control import call_rel, jcc, jmp_rel
from .insns.rmw import read_for_update
from .insns.system import read_tsc
from .state import ARITH_FLAGS, GPR_NAMES, IF, signed64

try:  # PyPy: machine-word arithmetic that wraps instead of growing a long integer
    from __pypy__ import intop as _intop
except ImportError:
    _intop = None

# CPython reads and writes guest RAM in translated code through typed views of it: an item of
# a memoryview cast to "q" costs a third of a struct unpack_from call there, and a store
# through one is one machine store, where pack_into clears the bytes first (see pyhv.memory:
# a device thread could read the 0). PyPy's JIT makes the struct calls cheaper than the
# views (60 ns an access more, measured in a loop), so it keeps them.
TYPED_VIEWS = not ON_PYPY and sys.byteorder == "little"

MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
SIGN = {1: 0x80, 2: 0x8000, 4: 0x8000_0000, 8: 0x8000_0000_0000_0000}
M64 = 0xFFFF_FFFF_FFFF_FFFF
MIN64 = -0x8000_0000_0000_0000
MAX64 = 0x7FFF_FFFF_FFFF_FFFF
NUM_GPRS = len(GPR_NAMES)
_WRAPPING = {"+": "int_add", "-": "int_sub", "<<": "int_lshift", "*": "int_mul"}

BlockFunction = Callable[..., int]


# Blocks the compile helper may have in hand before the vCPU translates the next one itself.
# The helper takes about 1.6 ms a block; early in a boot blocks come faster, and one queued
# behind many runs interpreted, or is waited for, meanwhile. The vCPU's translating and
# waiting over the Debian boot's first 150M instructions (CPython): no limit 1.04 + 1.79 s;
# 16: 0.94 + 1.24 s; 8: 1.30 + 0.77 s; 4: 1.73 + 0.46 s; 2: 2.43 + 0.31 s; all of it in the
# vCPU (the source generated there, compiled in the helper) 2.33 + 0.47 s.
HELPER_QUEUE = 8


class PendingBlock:
    """A block on its way to a function. Translated here: its ``source`` and ``consts`` (the
    globals it runs with). With the compile helper: ``parts`` and ``bits``, sent under
    ``token`` (see Translator.start_region)."""

    __slots__ = ("source", "filename", "consts", "profile", "token", "parts", "bits")

    def __init__(self, source: str, filename: str, consts: Dict[str, object],
                 profile: Optional["BlockProfile"]) -> None:
        self.source = source
        self.filename = filename
        self.consts = consts
        self.profile = profile
        self.token: Optional[int] = None
        self.parts: Sequence[List[Insn]] = ()
        self.bits = 0


def block_filename(first: Insn) -> str:
    """The file name a block's code is compiled under, which tracebacks and profiles show."""
    return f"<tcg block {first.addr:#x}>"


def literal_value(source: str) -> Optional[int]:
    """The value of ``source`` when it is an integer literal (as emitters write them)."""
    try:
        return int(source, 0)
    except ValueError:
        return None


def successors(insns: List[Insn]) -> Tuple[int, ...]:
    """The RIPs a block may go on at that its code names: a direct jump's target, and where
    it falls through (a conditional jump not taken, a block cut at its length limit)."""
    last = insns[-1]
    if last.handler is jcc:
        return (last.imm, last.next_rip)
    if last.handler is jmp_rel or last.handler is call_rel:
        return (last.imm,)
    if last.spec.flags & END or last.handler is None:
        return ()
    return (last.next_rip,)


def _jump_targets(insns: List[Insn]) -> Set[int]:
    """The RIPs translated code may leave ``insns`` for: a conditional jump's target (inside a
    superblock too), and the last instruction's successors. (A direct jmp or call before the
    end is no exit: the block goes on at its target.)"""
    targets = {insn.imm for insn in insns if insn.handler is jcc}
    targets.update(successors(insns))
    return targets


# An operand written out as a name or an integer literal: reading it again costs nothing.
_PLAIN_OPERAND = re.compile(r"[A-Za-z_]\w*|-?(?:0x[0-9a-f]+|\d+)")


class Untranslatable(Exception):
    """Raised by an instruction translator for a form it does not cover: use the handler."""


# Helpers every generated function sees as globals.
_SHARED_GLOBALS = {
    "GuestFault": GuestFault, "PARITY": PARITY, "condition": condition, "get_cf": get_cf,
    "read_for_update": read_for_update, "materialize": materialize, "read_tsc": read_tsc,
    "U2": struct.Struct("<H").unpack_from, "U4": struct.Struct("<I").unpack_from,
    "U8": struct.Struct("<q").unpack_from, "P2": struct.Struct("<H").pack_into,
    "P4": struct.Struct("<I").pack_into, "P8": struct.Struct("<q").pack_into,
}
if _intop is not None:
    _SHARED_GLOBALS.update(int_add=_intop.int_add, int_sub=_intop.int_sub,
                           int_lshift=_intop.int_lshift, int_mul=_intop.int_mul,
                           uint_rshift=_intop.uint_rshift)


def _hint_misses(mmu, views: Dict[str, memoryview]) -> Dict[str, Callable]:
    """The helpers an access calls when its page hint fails (another page, or the hinted
    access took the MMU's path): the whole access, as the inline code does it, returning the
    physical address for the hints after it too (-1 where the MMU's path served it).
    ``MR<size>(a)`` -> (value, ph); ``MU<size>(cpu, a)``, read for update, the same;
    ``MW<size>(a, value)`` -> ph. Calls, not inline code: a rare path, and source that
    CPython compiles for every block."""
    low, low_end, reads, writes = mmu.low, mmu.low_end, mmu.r, mmu.w
    helpers: Dict[str, Callable] = {}

    def build(size: int) -> None:
        if size == 1:
            def fits(ph: int) -> bool:
                return ph < low_end

            def load(ph: int) -> int:
                return low[ph]

            def put(ph: int, value: int) -> None:
                low[ph] = value
        elif TYPED_VIEWS:
            view, shift = views[f"M{size}"], size.bit_length() - 1

            def fits(ph: int) -> bool:
                return not ph & (size - 1) and ph < low_end

            def load(ph: int) -> int:
                return view[ph >> shift]

            def put(ph: int, value: int) -> None:
                view[ph >> shift] = value
        else:
            unpack, pack = _SHARED_GLOBALS[f"U{size}"], _SHARED_GLOBALS[f"P{size}"]

            def fits(ph: int) -> bool:
                return (ph & 4095) <= 4096 - size and ph < low_end

            def load(ph: int) -> int:
                return unpack(low, ph)[0]

            def put(ph: int, value: int) -> None:
                pack(low, ph, value)

        def signed(value: int) -> int:  # the MMU reads unsigned
            return value - (1 << 64) if size == 8 and value >> 63 else value

        def read(a: int) -> Tuple[int, int]:
            t = reads.get(a >> 12)
            if t is not None and fits(a + t):
                return load(a + t), a + t
            return signed(mmu.read(a, size)), -1

        def read_update(cpu, a: int) -> Tuple[int, int]:
            t = writes.get(a >> 12)
            if t is not None and fits(a + t):
                return load(a + t), a + t
            return signed(read_for_update(cpu, a, size)), -1

        def write(a: int, value: int) -> int:
            t = writes.get(a >> 12)
            if t is not None and fits(a + t):
                put(a + t, value)
                return a + t
            mmu.write(a, size, value)
            return -1

        helpers.update({f"MR{size}": read, f"MU{size}": read_update, f"MW{size}": write})

    for size in (1, 2, 4, 8):
        build(size)
    return helpers


class FlagSource:
    """The lazy-flag state an instruction left, known at translation time."""

    __slots__ = ("index", "op", "size")

    def __init__(self, index: int, op: int, size: int) -> None:
        self.index = index
        self.op = op
        self.size = size


class BlockCodegen:
    """Builds the source of one block function; instruction translators call its methods."""

    def __init__(self, insns: List[Insn], bits: int, low_end: int,
                 labels: Optional[Dict[int, int]] = None,
                 part_sizes: Tuple[int, ...] = ()) -> None:
        self.insns = insns
        self.bits = bits
        self.low_end = low_end
        # A region (see Translator.translate_region): the RIP of each part's first instruction
        # -> its label, and each part's length. Empty: one block, translated as it is.
        self.labels = labels or {}
        self.part_sizes = part_sizes
        self.part_start = 0  # the index in ``insns`` of the current part's first instruction
        self.part_last = len(insns) - 1  # and of its last one
        self.lines: List[str] = []
        self.indent = 2
        self.used: Set[int] = set()
        self.dirty: Set[int] = set()
        self.ever_dirty: Set[int] = set()
        self.segs_used: Set[int] = set()
        self.uses_memory = False
        self.uses_stack = False
        self.flags: Optional[FlagSource] = None  # None: CpuState holds the current flags
        self.fault_sources: Dict[int, Optional[FlagSource]] = {}  # pc → flags before it
        self.pc_set: Set[int] = set()  # instructions that set pc in their straight code
        self.consts: Dict[str, object] = {}
        self.index = 0  # the instruction being translated
        self.ended = False  # the block's last instruction already emitted its exits
        self._temp = 0
        self.wrote_slow = False
        # Page hints (see _hint_test): (base register or -1, segment) -> (the local holding
        # the physical address of the last access through it or -1, that access's
        # displacement from the register's current value, its size, the alignment its
        # physical address is known to have, whether the write TLB gave it).
        self.hints: Dict[Tuple[int, int], Tuple[str, int, int, int, bool]] = {}
        self.insn_indent = self.indent  # where the current instruction's straight code goes
        # The address that address() described and the next access computes: its lines, and
        # the (base, segment, displacement) that page hints know it by (None: no hint).
        self.pending: Optional[List[str]] = None
        self.pending_key: Optional[Tuple[int, int, int]] = None
        # (instruction, size) of a read for update whose physical address ``ph`` holds, or -1
        # when it took the MMU's path: the store that follows writes there without a lookup.
        self.update_read: Optional[Tuple[int, int]] = None
        self.a_unset = False  # the last access may have left ``a`` uncomputed (a hint served it)

    # --- low-level emission -----------------------------------------------------------
    def emit(self, line: str) -> None:
        self.lines.append("    " * self.indent + line)

    def temp(self, prefix: str = "v") -> str:
        self._temp += 1
        return f"{prefix}{self._temp}"

    def const(self, name: str, value: object) -> str:
        self.consts[name] = value
        return name

    def may_fault(self, emit: bool = True) -> str:
        """The current instruction may raise a guest fault: make the handler know it, by the
        statement this returns, which sets ``pc``. ``emit``: put it here, at most once per
        instruction; a memory access puts it in its slow path, the only one that can fault."""
        k = self.index
        if k not in self.fault_sources:
            self.fault_sources[k] = self.flags
        if emit and k not in self.pc_set:
            self.pc_set.add(k)
            self.emit(f"pc = {k}")
        return f"pc = {k}"

    # --- registers --------------------------------------------------------------------
    def reg(self, r: int, size: int) -> str:
        """Expression reading register ``r`` at ``size`` bytes (16-19: AH, CH, DH, BH)."""
        if r >= 16:
            self.used.add(r - 16)
            return f"((r{r - 16} >> 8) & 0xFF)"
        self.used.add(r)
        if size == 8:
            return f"r{r}"
        return f"(r{r} & {MASK[size]:#x})"

    def merged(self, r: int, size: int, value: str) -> str:
        """The whole 64-bit register after writing ``value`` (masked) at ``size`` bytes.

        The merge masks are negative (``~0xFFFF``) so that they keep the signed form."""
        base = r - 16 if r >= 16 else r
        self.used.add(base)
        if size == 8 or size == 4:
            return value
        if size == 2:
            return f"(r{r} & -0x10000) | ({value})"
        if r >= 16:
            return f"(r{base} & -0xff01) | (({value}) << 8)"
        return f"(r{r} & -0x100) | ({value})"

    def set_reg(self, r: int, size: int, value: str, moved_by: Optional[int] = None) -> None:
        """Store ``value`` (masked to ``size``; signed form at 8) with the merge rules.

        ``moved_by``: the new value is the old one plus this constant (push, pop), which keeps
        the page hints of accesses through the register."""
        base = r - 16 if r >= 16 else r
        self.dirty.add(base)
        self.ever_dirty.add(base)
        self.emit(f"r{base} = {self.merged(r, size, value)}")
        for key in [key for key in self.hints if key[0] == base]:
            if moved_by is None:
                del self.hints[key]
            else:
                name, disp, width, align, writable = self.hints[key]
                self.hints[key] = (name, disp - moved_by, width, align, writable)

    # --- 64-bit arithmetic in the signed form -------------------------------------------
    @staticmethod
    def imm(value: int, size: int) -> str:
        """A constant operand of ``size`` bytes as source (signed form at 8 bytes)."""
        return f"{signed64(value) if size == 8 else value & MASK[size]:#x}"

    def fold64(self, name: str, below: bool = True, above: bool = True) -> None:
        """Bring local ``name`` back into the signed 64-bit range (a test, rarely a fold);
        ``below``/``above``: which side it may have left by.

        Written ``if name < …`` so that :func:`prune_flag_locals` sees a flag local's
        definition, not a use, and drops the test with the dead local."""
        tests = []
        if below:
            tests.append(f"{name} < {MIN64:#x}")
        if above:
            tests.append(f"{name} > {MAX64:#x}")
        fold = f"{name} = (({name} - {MIN64:#x}) & {M64:#x}) + {MIN64:#x}"
        self.emit(f"if {' or '.join(tests)}: {fold}")

    def arith64(self, name: str, a: str, op: str, b: str) -> str:
        """Emit ``name = a op b`` (op: + - << *) as a 64-bit operation; returns ``name``."""
        if _intop is not None:
            self.emit(f"{name} = {_WRAPPING[op]}({a}, {b})")
            return name
        self.emit(f"{name} = {a} {op} {b}")
        constant = literal_value(b)
        if constant is None or op not in ("+", "-"):
            self.fold64(name)
        else:  # a constant moves the result one way only (one test on CPython, not two)
            up = (constant >= 0) == (op == "+")
            self.fold64(name, below=not up, above=up)
        return name

    def logical_shift_right(self, value: str, count: str, size: int) -> str:
        """Expression for the logical right shift of an operand of ``size`` bytes."""
        if size != 8:
            return f"({value} >> {count})"
        if _intop is not None:
            return f"uint_rshift({value}, {count})"
        return f"(({value} & {M64:#x}) >> {count})"

    @staticmethod
    def negative(value: str, size: int) -> str:
        """Truth expression: the sign bit of ``value`` (an operand of ``size`` bytes)."""
        return f"{value} < 0" if size == 8 else f"{value} >= {SIGN[size]:#x}"

    @staticmethod
    def below(a: str, b: str, size: int, equal: bool = False) -> str:
        """Truth expression: ``a < b`` (``<=`` with ``equal``) as unsigned operands.

        At 8 bytes, signed values of one sign compare the same way unsigned; a negative one
        is the larger. Comparisons only: flipping the sign bit with ``^`` would allocate a
        new integer on CPython for each operand."""
        op = "<=" if equal else "<"
        if size != 8:
            return f"{a} {op} {b}"
        constant = literal_value(b)
        if constant is not None:
            if constant >= 0:
                return f"(0 <= {a} {op} {b})"
            return f"({a} >= 0 or {a} {op} {b})"
        return f"(({a} {op} {b}) == (({a} < 0) == ({b} < 0)))"

    @staticmethod
    def less(a: str, b: str, size: int, equal: bool = False) -> str:
        """Truth expression: ``a < b`` (``<=`` with ``equal``) as signed operands."""
        op = "<=" if equal else "<"
        if size == 8:
            return f"{a} {op} {b}"
        sign = SIGN[size]
        return f"({a} ^ {sign:#x}) {op} ({b} ^ {sign:#x})"

    @staticmethod
    def sign_extended(expr: str, size: int) -> str:
        """Expression for ``expr`` (``size`` bytes, unsigned) as a signed integer."""
        return f"(({expr} ^ {SIGN[size]:#x}) - {SIGN[size]:#x})"

    @staticmethod
    def sign_of(expr: str, size: int) -> str:
        """Truth expression: bit 8*size-1 of ``expr`` (a bitwise combination) is set."""
        return f"({expr}) < 0" if size == 8 else f"({expr}) & {SIGN[size]:#x}"

    # --- addresses and memory -----------------------------------------------------------
    def offset(self, i: Insn, fold: bool = False) -> str:
        """Expression for the offset of ``i``'s memory operand in its segment.

        A 64-bit address is left unfolded (the MMU folds the rare one out of range, which
        misses the TLB); ``fold``: lea, whose result is a register value.
        """
        mask = MASK[i.adsize]
        terms = []
        if i.base >= 0:
            self.used.add(i.base)
            terms.append(f"r{i.base}")
        if i.index >= 0:
            self.used.add(i.index)
            terms.append(f"(r{i.index} << {i.scale})" if i.scale else f"r{i.index}")
        if i.adsize != 8:
            if not terms:
                return f"{i.disp & mask:#x}"
            if i.disp:
                terms.append(f"{i.disp:#x}")
            return f"(({' + '.join(terms)}) & {mask:#x})"
        disp = signed64(i.disp)
        if not terms:
            return f"{disp:#x}"
        if len(terms) == 1 and not disp:
            return terms[0]
        if disp:
            terms.append(f"{disp:#x}" if disp > 0 else f"- {-disp:#x}")
        self.emit(f"o = {' + '.join(terms)}".replace("+ -", "-"))
        if fold:
            self.fold64("o")
        return "o"

    def linear(self, i: Insn) -> str:
        """Expression for the linear address of ``i``'s memory operand, unfolded (as
        :meth:`offset`), emitting what it needs first."""
        offset = self.offset(i)
        if i.seg < 0:
            return offset
        self.segs_used.add(i.seg)
        return f"{offset} + sb{i.seg}"

    def address(self, i: Insn) -> str:
        """Describe ``a = `` the linear address of ``i``'s memory operand (as :func:`ea`) to
        the access that follows, which emits it where it needs it: an access that a page hint
        serves never computes it."""
        mark = len(self.lines)
        self.emit(f"a = {self.linear(i)}")
        pad = len("    " * self.indent)
        self.pending = [line[pad:] for line in self.lines[mark:]]
        del self.lines[mark:]
        self.pending_key = None
        if self.bits == 64 and i.adsize == 8 and i.index < 0:
            self.pending_key = (i.base, i.seg, signed64(i.disp))
        return "a"

    def _ram_test(self, size: int) -> str:
        """The test that ``a`` plus its TLB delta ``t`` (see Mmu.r) puts ``size`` bytes in one
        page of low RAM, leaving the physical address in ``ph``. With typed views the access
        must be aligned, which keeps it in one page too; an unaligned one takes the MMU's path."""
        if size == 1:
            return f"(ph := a + t) < {self.low_end:#x}"
        if TYPED_VIEWS:
            return f"not ((ph := a + t) & {size - 1}) and ph < {self.low_end:#x}"
        return f"((ph := a + t) & 4095) <= {4096 - size} and ph < {self.low_end:#x}"

    @staticmethod
    def _ram_access(size: int, ph: str, result: Optional[str], value: Optional[str]) -> str:
        """The statement that reads ``size`` bytes of low RAM at ``ph`` into ``result``, or
        writes ``value`` there."""
        if size == 1:
            place = f"low[{ph}]"
        elif TYPED_VIEWS:
            place = f"M{size}[{ph} >> {size.bit_length() - 1}]"
        elif result is not None:
            return f"{result} = U{size}(low, {ph})[0]"
        else:
            return f"P{size}(low, {ph}, {value})"
        return f"{result} = {place}" if result is not None else f"{place} = {value}"

    def _hint_test(self, key: Tuple[int, int, int], size: int, write: bool) -> Optional[str]:
        """A page hint: the test that the access at ``key`` lies in the page of the last access
        through the same register (unchanged since, or moved by a known constant), so that
        its physical address is that one's plus the difference, with no TLB lookup: a push
        after a push, a field after a field of the same structure. None: no usable hint.

        The hint local is -1 where that access took the MMU's path; the tests reject it."""
        base, seg, disp = key
        hint = self.hints.get((base, seg))
        if hint is None or self.indent != self.insn_indent:
            return None
        name, last, width, align, writable = hint
        if write and not writable:
            return None
        d = disp - last
        if TYPED_VIEWS and size > 1 and (align % size or d % size):
            return None
        if not -4096 < d < 4096 - size:
            return None
        tests = []
        if d < 0:
            tests.append(f"({name} & 4095) >= {-d}")
        if d + size > width:  # -1 fails this one (its offset 4095 leaves no room)
            tests.append(f"({name} & 4095) <= {4096 - size - d}")
        else:
            tests.insert(0, f"{name} >= 0")
        return " and ".join(tests)

    def _access(self, size: int, kind: str, addr: str, value: Optional[str] = None,
                key: Optional[Tuple[int, int, int]] = None) -> Optional[str]:
        """Emit a memory access (``kind``: "r" read, "u" read for update, "w" write of
        ``value``) at ``addr``; returns the local a read leaves its value in."""
        self.uses_memory = True
        set_pc = self.may_fault(emit=False)
        if addr == "a" and self.pending is not None:
            lines, key = self.pending, self.pending_key
        elif addr == "a":
            if self.a_unset:
                raise Untranslatable("a second access at an address a page hint served")
            lines = []
        else:
            lines = [f"a = {addr}"]
        self.pending = self.pending_key = None
        self.update_read = None
        result = None if kind == "w" else self.temp()
        # A hint vouches for a whole page of low RAM, and for straight code: an access inside
        # an if of its instruction may not run, so it neither uses nor leaves one.
        if self.low_end % 4096 or self.indent != self.insn_indent:
            key = None
        hint = self._hint_test(key, size, kind != "r") if key is not None else None
        self.a_unset = hint is not None
        if hint is not None:
            name, last = self.hints[key[:2]][:2]
            d = key[2] - last
            self.emit(f"if {hint}:")
            ph = f"(ph := {name} {'-' if d < 0 else '+'} {abs(d)})" if d else f"(ph := {name})"
            self.emit("    " + self._ram_access(size, ph, result, value))
            self.emit("else:")
            self.emit("    " + set_pc)
            for line in lines:
                self.emit("    " + line)
            if kind == "r":
                self.emit(f"    {result}, ph = MR{size}(a)")
            elif kind == "u":
                self.emit(f"    {result}, ph = MU{size}(cpu, a)")
            else:
                self.emit(f"    ph = MW{size}(a, {value})")
                self._slow_write_ends_block()
        else:
            self._looked_up(size, kind, lines, result, value, set_pc, key is not None)
        if key is not None:
            base, seg, disp = key
            name = f"h{base if base >= 0 else 'x'}{'' if seg < 0 else f's{seg}'}"
            align = 4096 if not TYPED_VIEWS else size
            self.emit(f"{name} = ph")
            self.hints[(base, seg)] = (name, disp, size, align, kind != "r")
        if kind == "u":
            self.update_read = (self.index, size)
        return result

    def _looked_up(self, size: int, kind: str, lines: List[str], result: Optional[str],
                   value: Optional[str], set_pc: str, hinting: bool) -> None:
        """An access through the TLB dicts, the MMU's path when they miss; leaves the physical
        address in ``ph`` (-1 after the MMU's path) where a hint or a store will want it."""
        for line in lines:
            self.emit(line)
        self.emit(f"t = {'R' if kind == 'r' else 'W'}.get(a >> 12)")
        self.emit(f"if t is not None and {self._ram_test(size)}:")
        self.emit("    " + self._ram_access(size, "ph", result, value))
        self.emit("else:")
        self.emit("    " + set_pc)
        if kind == "r":
            self.emit(f"    {result} = mmu.read(a, {size})")
        elif kind == "u":
            self.emit(f"    {result} = read_for_update(cpu, a, {size})")
        else:
            self.emit(f"    mmu.write(a, {size}, {value})")
            self._slow_write_ends_block()
        if kind != "w" and size == 8:  # the MMU reads unsigned
            self.emit(f"    if {result} >> 63: {result} -= {M64 + 1:#x}")
        if hinting or kind == "u":
            self.emit("    ph = -1")

    def _slow_write_ends_block(self) -> None:
        """After a write through the MMU's path (just emitted, one level in): a write to a page
        with translated code, or an MMIO exit request, ends the block after this instruction."""
        self.emit("    brk = cpu.break_block")
        self.wrote_slow = True

    def load(self, addr: str, size: int, update: bool = False,
             key: Optional[Tuple[int, int, int]] = None) -> str:
        """Emit a read of ``size`` bytes at linear ``addr``; returns the value's local.

        ``update``: the destination of a read-modify-write, which the CPU checks for write
        access before reading (a fault reports W=1); the write TLB serves the fast path.
        ``key``: (base register, segment, displacement) of ``addr`` for page hints, where the
        caller computes it (the stack); an address from :meth:`address` carries its own.
        """
        result = self._access(size, "u" if update else "r", addr, key=key)
        assert result is not None
        return result

    def store(self, addr: str, size: int, value: str,
              key: Optional[Tuple[int, int, int]] = None) -> None:
        """Emit a write of ``value`` (masked to ``size``; signed form at 8) at ``addr``.

        The store of a read-modify-write goes where its read went: ``ph``, or the MMU's path
        when the read took it."""
        if addr == "a" and self.pending is None and self.update_read == (self.index, size):
            self.uses_memory = True
            self.emit("if ph >= 0:")
            self.emit("    " + self._ram_access(size, "ph", None, value))
            self.emit("else:")
            self.emit("    " + self.may_fault(emit=False))
            self.emit(f"    mmu.write(a, {size}, {value})")
            self._slow_write_ends_block()
            return
        self._access(size, "w", addr, value, key)

    def read_operand(self, i: Insn, size: int, update: bool = False) -> str:
        """The r/m operand of ``i`` as an expression (a load for memory forms)."""
        if i.is_mem:
            return self.load(self.address(i), size, update)
        return self.reg(i.rm, size)

    # --- stack ------------------------------------------------------------------------
    def push(self, size: int, value: str) -> None:
        self.uses_stack = True
        self.used.add(4)
        if self.bits == 64:
            self.arith64("sp", "r4", "-", str(size))
            self.store("sp", size, value, key=(4, -1, -size))
            self.set_reg(4, 8, "sp", moved_by=-size)
        else:
            self.emit(f"sp = (r4 - {size}) & smask")
            self.store("ssb + sp", size, value)
            self.set_reg(4, 8, "(r4 & ~smask) | sp")

    def pop(self, size: int) -> str:
        """Emit a pop; RSP is committed at once (the value is loaded before that)."""
        self.uses_stack = True
        self.used.add(4)
        if self.bits == 64:
            value = self.load("r4", size, key=(4, -1, 0))
            self.arith64("sp", "r4", "+", str(size))
            self.set_reg(4, 8, "sp", moved_by=size)
        else:
            self.emit("sp = r4 & smask")
            value = self.load("ssb + sp", size)
            self.set_reg(4, 8, f"(r4 & ~smask) | ((sp + {size}) & smask)")
        return value

    # --- lazy flags -------------------------------------------------------------------
    def set_flags_from(self, op: int, size: int, a: str, b: str, result: Callable[[str, str], str],
                       carry: str = "") -> None:
        """:meth:`set_flags` with ``res = result(a, b)``, the operands read back from fa<k> and
        fb<k> where they are expressions: ``(r7 & 0xffffffff)``, a 32-bit operand, costs an AND
        each time it is written out on CPython, where ``fa<k>`` is a local's load."""
        k = self.index
        res = result(a if _PLAIN_OPERAND.fullmatch(a) else f"fa{k}",
                     b if _PLAIN_OPERAND.fullmatch(b) else f"fb{k}")
        self.set_flags(op, size, a, b, res, carry)

    def set_flags(self, op: int, size: int, a: str, b: str, res: str, carry: str = "") -> None:
        """Record that the current instruction set the flags as ``op`` on a, b → res."""
        k = self.index
        self.emit(f"fa{k} = {a}")
        self.emit(f"fb{k} = {b}")
        if res:  # empty: the caller already computed fr<k>
            self.emit(f"fr{k} = {res}")
        if carry:
            self.emit(f"fc{k} = {carry}")
        self.flags = FlagSource(k, op, size)

    def add64(self, a: str, b: str, subtract: bool) -> str:
        """Emit ``fr<k> = a ± b`` as a 64-bit operation; returns ``fr<k>``."""
        return self.arith64(f"fr{self.index}", a, "-" if subtract else "+", b)

    def set_eager(self, size: int, res: str, cf: str, of: str) -> None:
        """Flags computed now (shifts): ZF/SF/PF from ``res``, CF and OF given as 0/1."""
        k = self.index
        if res != f"fr{k}":
            self.emit(f"fr{k} = {res}")
        zf, sf = self.zero_flag(f"fr{k}", size), self.sign_flag(f"fr{k}", size)
        self.emit(f"fl{k} = PARITY[fr{k} & 255] | {zf} | {sf} | ({cf}) | (({of}) << 11)")
        self.flags = FlagSource(k, CC_EAGER, size)

    # PyPy's JIT turns a test on data (``64 if r == 0 else 0``) into a guard, and a guard that
    # fails often (a shift in hash code, whose sign is a coin toss) into a bridge it enters
    # half the time. These give the flag bits without a test. Measured on PyPy with random
    # 32-bit values: 8.7 ns a flag word with the tests, 1.1 ns without; no change measurable
    # on the whole Debian boot. CPython keeps the tests, cheaper there (83 against 132 ns).
    @staticmethod
    def zero_bit(value: str, size: int) -> str:
        """Expression: 0x40 (ZF) when ``value`` (an operand of ``size`` bytes) is 0, else 0."""
        minus_one = f"int_sub({value}, 1)" if size == 8 else f"({value} - 1)"
        return f"((({minus_one} & ~{value}) >> 63) & 0x40)"

    @staticmethod
    def sign_bit(value: str, size: int) -> str:
        """Expression: 0x80 (SF) when the sign bit of ``value`` (``size`` bytes) is set, else 0."""
        shift = 8 * size - 8
        return f"(({value} >> {shift}) & 0x80)" if shift else f"({value} & 0x80)"

    def zero_flag(self, value: str, size: int) -> str:
        """Expression: 0x40 when ``value`` is 0, else 0 (a test on CPython, bits on PyPy)."""
        return f"(64 if {value} == 0 else 0)" if _intop is None else self.zero_bit(value, size)

    def sign_flag(self, value: str, size: int) -> str:
        """Expression: 0x80 when ``value``'s sign bit is set, else 0 (as zero_flag)."""
        if _intop is None:
            return f"(128 if {self.negative(value, size)} else 0)"
        return self.sign_bit(value, size)

    def carry(self) -> str:
        """Expression for CF as 0/1 from the current flag source."""
        src = self.flags
        if src is None:
            return "get_cf(s)"
        k, size = src.index, src.size
        if src.op in (CC_ADD, CC_SUB, CC_LOGIC, CC_EAGER):
            return self._flag_bits(src)["c"]
        if src.op == CC_ADC:
            return (f"(1 if {self.below(f'fr{k}', f'fa{k}', size)} or (fc{k} and fr{k} == fa{k})"
                    " else 0)")
        if src.op == CC_SBB:
            return (f"(1 if {self.below(f'fa{k}', f'fb{k}', size)} or (fc{k} and fa{k} == fb{k})"
                    " else 0)")
        return f"fc{k}"

    def arith_flags(self) -> str:
        """Emit the six arithmetic flags as RFLAGS bits into a local; returns its name.

        For instructions that change only some flags (rotates, bt) or none (a shift by CL
        of 0). From an add, sub, logic, inc or dec source the flags are one expression of
        its operand locals (``fq<k>``, which the pruning drops when nothing reads it), with
        no test on the data. Otherwise the lazy source goes to CpuState and ``materialize``
        folds it: harmless, as every exit and the fault handler write the flags again.
        """
        src = self.flags
        if src is not None and src.op == CC_EAGER:
            return f"fl{src.index}"
        if src is not None and src.op in (CC_ADD, CC_SUB, CC_LOGIC, CC_INC, CC_DEC):
            name = f"fq{self.index}"
            self.emit(f"{name} = {self._arith_flags_expression(src)}")
            return name
        for line in self.flag_writeback(src):
            self.emit(line)
        name = self.temp("fx")
        self.emit("materialize(s)")
        self.emit(f"{name} = s.rflags & {ARITH_FLAGS:#x}")
        return name

    # Hash and cipher code (blake2s, sha256, chacha) rotates after nearly every add or xor,
    # and a rotate keeps SF/ZF/AF/PF, so it needs them. Folded through CpuState by
    # ``materialize`` (a call, with a test on each flag that goes either way on hash data),
    # blake2s_compress_generic's translated blocks ran at about 96 ns an instruction on
    # PyPy; with this expression, 46 ns.
    def _arith_flags_expression(self, src: FlagSource) -> str:
        """RFLAGS arithmetic bits of an add/sub/logic/inc/dec source (see _flag_bits)."""
        k, size = src.index, src.size
        word = [f"PARITY[fr{k} & 255]", self.zero_flag(f"fr{k}", size), self.sign_flag(f"fr{k}", size)]
        if src.op != CC_LOGIC:
            bits = self._flag_bits(src)
            word += [bits["c"], f"({bits['o']} << 11)", f"((fa{k} ^ fb{k} ^ fr{k}) & 0x10)"]
        return " | ".join(word)

    def _flag_bits(self, src: FlagSource) -> Dict[str, str]:
        """CF, ZF, SF, OF and PF of a source other than adc/sbb, as 0/1 expressions (keys
        c, z, s, o, p) with no test on the data, except ZF on CPython, where a comparison
        costs less (see zero_flag). PyPy's JIT makes each test a guard, and one that goes
        either way (hash or bignum data) a bridge it enters half the time.

        CF and OF come from the sign bits: CF of a + b is the carry out of the top bit,
        (a & b) | ((a | b) & ~r); of a - b the borrow, (~a & b) | (~(a ^ b) & r). Both hold
        for the masked operands below 8 bytes and for either form of 8-byte ones, since
        only bit 8*size-1 is read."""
        k, op, size = src.index, src.op, src.size
        if op == CC_EAGER:
            flags = f"fl{k}"
            return {"c": f"({flags} & 1)", "z": f"(({flags} >> 6) & 1)",
                    "s": f"(({flags} >> 7) & 1)", "o": f"(({flags} >> 11) & 1)",
                    "p": f"(({flags} >> 2) & 1)"}
        a, b, r = f"fa{k}", f"fb{k}", f"fr{k}"
        top = 8 * size - 1
        bits = {"z": f"({self.zero_flag(r, size)} >> 6)", "s": f"(({r} >> {top}) & 1)",
                "p": f"(PARITY[{r} & 255] >> 2)"}
        if op == CC_LOGIC:
            bits["c"] = bits["o"] = "0"
        elif op == CC_ADD:
            bits["c"] = f"(((({a} & {b}) | (({a} | {b}) & ~{r})) >> {top}) & 1)"
            bits["o"] = f"(((({a} ^ {r}) & ({b} ^ {r})) >> {top}) & 1)"
        elif op == CC_SUB:
            bits["c"] = f"((((~{a} & {b}) | (~({a} ^ {b}) & {r})) >> {top}) & 1)"
            bits["o"] = f"(((({a} ^ {b}) & ({a} ^ {r})) >> {top}) & 1)"
        elif op == CC_INC:
            bits["c"], bits["o"] = f"fc{k}", f"((({r} & ~{a}) >> {top}) & 1)"
        else:  # CC_DEC
            bits["c"], bits["o"] = f"fc{k}", f"((({a} & ~{r}) >> {top}) & 1)"
        return bits

    # The kernel's generic bignum code (mpihelp_addmul_1: RSA for module signatures) keeps
    # carries with setc and adc and picks with cmov, on random data: with these, its
    # translated loops went from 49 to 4.3 ns an instruction on PyPy. A jcc keeps its test:
    # blocks that chose their exit RIP by arithmetic made the whole boot slower
    # (39.9 -> 45.6 s, three runs each).
    def condition_bit(self, cc: int) -> str:
        """Expression: 1 when condition code ``cc`` holds, else 0 (setcc, cmovcc), with
        no test on the data where the flag source allows."""
        src = self.flags
        if src is None or src.op == CC_ADC or src.op == CC_SBB:
            return f"(1 if {self.condition(cc)} else 0)"
        bits = self._flag_bits(src)
        c, z, sf, o = bits["c"], bits["z"], bits["s"], bits["o"]
        table = (o, c, z, f"({c} | {z})", sf, bits["p"], f"({sf} ^ {o})", f"({z} | ({sf} ^ {o}))")
        expr = table[cc >> 1]
        return f"({expr} ^ 1)" if cc & 1 else expr

    def condition(self, cc: int) -> str:
        """Python truth expression for condition code ``cc`` of jcc/setcc/cmovcc."""
        src = self.flags
        if src is not None and (src.op == CC_ADC or src.op == CC_SBB):
            for line in self.flag_writeback(src):
                self.emit(line)
            return f"condition(s, {cc})"
        if src is None:
            return f"condition(s, {cc})"
        k, op, size, sign = src.index, src.op, src.size, SIGN[src.size]
        a, b, r = f"fa{k}", f"fb{k}", f"fr{k}"
        zf = f"{r} == 0"
        sf = self.negative(r, size)
        pf = f"PARITY[{r} & 255]"
        if op == CC_SUB:
            table = (self.sign_of(f"({a} ^ {b}) & ({a} ^ {r})", size), self.below(a, b, size),
                     f"{a} == {b}", self.below(a, b, size, equal=True), sf, pf,
                     self.less(a, b, size), self.less(a, b, size, equal=True))
        else:
            if op == CC_ADD:
                cf, of = self.below(r, a, size), self.sign_of(f"({a} ^ {r}) & ({b} ^ {r})", size)
            elif op == CC_LOGIC:
                cf, of = "", ""
            elif op == CC_INC:
                cf, of = f"fc{k}", f"{r} == {MIN64 if size == 8 else sign:#x}"
            elif op == CC_DEC:
                cf, of = f"fc{k}", f"{r} == {sign - 1:#x}"
            else:
                flags = f"fl{k}"
                cf, of = f"{flags} & 1", f"{flags} & 0x800"
                zf, sf, pf = f"({flags} & 0x40) != 0", f"({flags} & 0x80) != 0", f"{flags} & 4"
            lt = f"({sf}) != (({of}) != 0)" if of else sf
            table = (of or "False", cf or "False", zf, f"({cf}) or {zf}" if cf else zf, sf, pf,
                     lt, f"{zf} or ({lt})")
        expr = table[cc >> 1]
        return f"not ({expr})" if cc & 1 else f"({expr})"

    def flag_writeback(self, src: Optional[FlagSource]) -> List[str]:
        if src is None:
            return []
        k = src.index
        if src.op == CC_EAGER:
            return [f"s.rflags = (s.rflags & {~ARITH_FLAGS:#x}) | fl{k}", "s.cc_op = 0"]
        out = [f"s.cc_op = {src.op}", f"s.cc_size = {src.size}", f"s.cc_a = fa{k}",
               f"s.cc_b = fb{k}", f"s.cc_res = fr{k}"]
        if src.op in (CC_INC, CC_DEC, CC_ADC, CC_SBB):
            out.append(f"s.cc_cf = fc{k}")
        return out

    # --- exits ------------------------------------------------------------------------
    def sync_out(self) -> None:
        """Store the dirty registers and the lazy flags to CpuState."""
        if self.labels:
            self.emit("#STORE")  # a part does not know which registers the parts before wrote
        else:
            for r in sorted(self.dirty):
                self.emit(f"regs[{r}] = r{r}")
        for line in self.flag_writeback(self.flags):
            self.emit(line)

    def retired(self, count: int) -> str:
        """Expression: the instructions retired by this call when ``count`` of ``insns`` ran
        (in a region, those of the current part, after ``ndone`` retired by the parts before)."""
        if not self.labels:
            return str(count)
        return f"ndone + {count - self.part_start}"

    def exit(self, rip: str, retired: int) -> None:
        self.sync_out()
        self.emit(f"s.rip = {rip}")
        self.emit(f"return {self.retired(retired)}")

    def jump(self, rip: int, retired: int) -> None:
        """Go on at the constant ``rip`` after ``retired`` of ``insns``: at its part's label
        when the region holds it (unless the budget, an exit request or an interrupt that
        RFLAGS.IF lets in says to leave), else leave the function."""
        label = self.labels.get(rip)
        if label is None:
            self.exit(f"{rip:#x}", retired)
            return
        flags = self.flags
        # Each part begins with the flags in CpuState: its incoming paths left different ones.
        for line in self.flag_writeback(flags):
            self.emit(line)
        self.flags = None
        self.emit(f"ndone += {retired - self.part_start}")
        self.emit(f"if ndone > budget - {self.part_sizes[label]} or cpu.exit_request or "
                  f"(cpu.interrupt_request and s.rflags & {IF:#x}):")
        self.emit("    #STORE")
        self.emit(f"    s.rip = {rip:#x}")
        self.emit("    return ndone")
        self.emit(f"lab = {label}")
        self.emit("continue")
        self.flags = flags


def _source(gen: BlockCodegen, body: List[str]) -> str:
    """Wrap the body with the prologue (locals loaded) and the precise-fault handler."""
    head = ["def block(cpu, s, budget):", "    regs = s.regs"]
    load = []
    if gen.uses_memory:
        load.append("brk = False")  # mmu, low, R and W are the block's globals
    if gen.uses_stack and gen.bits != 64:
        load += ["smask = cpu.stack_mask", "ssb = s.segs[2].base"]
    for seg in sorted(gen.segs_used):
        load.append(f"sb{seg} = s.segs[{seg}].base")
    load += [f"r{r} = regs[{r}]" for r in sorted(gen.used)]
    out = head + ["    " + line for line in load]
    out.append("    pc = 0")
    if gen.labels:
        out += ["    ndone = 0", "    lab = 0"]
    store = [f"regs[{r}] = r{r}" for r in sorted(gen.ever_dirty)]
    out.append("    try:")
    for line in body:
        mark = line.strip()
        if mark == "#RELOAD" or mark == "#STORE":
            pad = line[:len(line) - len(line.lstrip())]
            out += [pad + line2 for line2 in (load if mark == "#RELOAD" else store)]
        else:
            out.append(line)
    # In a region, ndone: the instructions the parts before retired; OFF: each one's place in
    # its part.
    before = "ndone + OFF[k]" if gen.labels else "k"
    out.append("    except GuestFault as fault:")
    out.append("        if pc < 0:")
    out.append("            k = -1 - pc")
    out.append(f"            cpu.fault_retired = {before} + 1 if fault.trap else {before}")
    out.append("            if not fault.trap:")
    out.append("                s.rip = ADDR[k]")
    out.append("            raise")
    for r in sorted(gen.ever_dirty):
        out.append(f"        regs[{r}] = r{r}")
    by_source: Dict[int, List[int]] = {}
    for pc, src in sorted(gen.fault_sources.items()):
        if src is not None:
            by_source.setdefault(src.index, []).append(pc)
    sources = {src.index: src for src in gen.fault_sources.values() if src is not None}
    for index, pcs in sorted(by_source.items()):
        cond = f"pc == {pcs[0]}" if len(pcs) == 1 else f"pc in {tuple(pcs)!r}"
        out.append(f"        if {cond}:")
        out += ["            " + line for line in gen.flag_writeback(sources[index])]
    out.append("        s.rip = ADDR[pc]")
    out.append(f"        cpu.fault_retired = {'ndone + OFF[pc]' if gen.labels else 'pc'}")
    out.append("        raise")
    return "\n".join(out) + "\n"


class BlockProfile:
    """How often one translated block ran, and which of its instructions fell back."""

    __slots__ = ("insns", "runs", "retired", "fallbacks")

    def __init__(self, insns: List[Insn]) -> None:
        self.insns = insns
        self.runs = 0
        # Instructions its function returned as retired: a region that loops retires many
        # times its length in one call, and one that leaves early fewer.
        self.retired = 0
        self.fallbacks: List[Insn] = []

    def counting(self, fn: BlockFunction) -> BlockFunction:
        """``fn``, adding what each call retires to :attr:`retired`."""
        def block(cpu, s, budget: int) -> int:
            retired = fn(cpu, s, budget)
            self.retired += retired
            return retired
        return block


class Translator:
    """Turns a block's decoded instructions into a compiled function ``block(cpu, s)``.

    The function runs the block (or a prefix of it, when an instruction ends it early),
    leaves RIP and the registers in ``cpu.s`` and returns the number of instructions retired.
    """

    def __init__(self, mmu, emitters: Dict[Callable, Callable]) -> None:
        # The blocks see the MMU, its RAM view and its read and write TLB dicts (which it
        # clears in place, never replaces) as globals: no attribute loads at each entry.
        self.mmu = mmu
        self.low_end = mmu.low_end
        self.emitters = emitters
        low = mmu.low
        self.typed_views = ({"M2": low.cast("H"), "M4": low.cast("I"), "M8": low.cast("q")}
                            if TYPED_VIEWS else {})
        self.hint_misses = _hint_misses(mmu, self.typed_views)
        self.translated = 0
        self.seconds = 0.0  # spent translating, for the benchmarks
        self.keep_source = False
        self.last_source = ""
        # When a list, every block translated from now on counts its runs: the translator
        # appends a BlockProfile per block (bench/tcg_kernel.py reads them).
        self.profiles: Optional[List[BlockProfile]] = None
        # Code an earlier boot of this guest compiled (see .codecache); None: compile each block.
        self.code_cache: Optional[CodeCache] = None
        # Compiles sources beside the vCPU for start_region (see .compiler); None: here.
        self.helper: Optional[CompileHelper] = None

    def translate(self, insns: List[Insn], bits: int) -> BlockFunction:
        """Translate one block."""
        return self.translate_region([insns], bits)

    def translate_region(self, parts: Sequence[List[Insn]], bits: int) -> BlockFunction:
        """Translate blocks that jump to one another into one function entered at the first
        (see :func:`generate_block`), here."""
        started = time.perf_counter()
        pending = self._generate(parts, bits)
        fn = self._install(pending, self._compile_here(pending))
        self.seconds += time.perf_counter() - started
        return fn

    def start_region(self, parts: Sequence[List[Insn]],
                     bits: int) -> Union[BlockFunction, PendingBlock]:
        """:meth:`translate_region`, but where the compile helper is at hand and has fewer than
        HELPER_QUEUE blocks in hand, the instructions go to the helper and a PendingBlock comes
        back, for :meth:`finish`. (The helper translates with the table of translate_insns, as
        every Cpu does; a profiled or kept source is made here.)"""
        helper = self.helper
        if (helper is not None and self.profiles is None and not self.keep_source
                and helper.in_flight() < HELPER_QUEUE):
            started = time.perf_counter()
            filename = block_filename(parts[0][0])
            token = helper.submit(parts, bits, self.low_end, filename)
            self.seconds += time.perf_counter() - started
            if token is not None:
                pending = PendingBlock("", filename, {}, None)
                pending.token, pending.parts, pending.bits = token, parts, bits
                return pending
        return self.translate_region(parts, bits)

    def _generate(self, parts: Sequence[List[Insn]], bits: int) -> PendingBlock:
        """The block's source, generated here (see :func:`generate_block`)."""
        profile: Optional[BlockProfile] = None
        if self.profiles is not None:
            profile = BlockProfile([insn for part in parts for insn in part])
            self.profiles.append(profile)
        source, filename, consts = generate_block(parts, bits, self.low_end, self.emitters, profile)
        if self.keep_source:
            self.last_source = prune_flag_locals(source)
        return PendingBlock(source, filename, consts, profile)

    def finish(self, pending: PendingBlock, wait: bool = False) -> Optional[BlockFunction]:
        """The function of a block the compile helper has, once translated (with ``wait``,
        waiting for it); None while it is being translated."""
        done, translated = self.helper.result(pending.token, wait)
        if not done:
            return None
        if translated is not None:
            started = time.perf_counter()
            try:
                pending.consts = block_consts(translated.names, pending.parts)
            except ValueError as err:
                self.helper.fail(f"it sent back a block with {err}")
            else:
                if self.code_cache is not None:
                    self.code_cache.keep(translated.key, translated.blob, translated.new)
                fn = self._install(pending, translated.code)
                self.seconds += time.perf_counter() - started
                return fn
        return self.translate_region(pending.parts, pending.bits)

    def _compile_here(self, pending: PendingBlock) -> CodeType:
        """The block's code compiled in this thread, or loaded from the code cache."""
        if self.code_cache is not None:
            return self.code_cache.compile(pending.source, pending.filename)
        return compile_block(pending.source, pending.filename)

    def _install(self, pending: PendingBlock, code: CodeType) -> BlockFunction:
        """The block's function, from its code."""
        # A module's dict, not a plain one: PyPy's JIT folds a global read from a module
        # dict into a constant, but looks each one up by name in a plain dict, which cost
        # several dict lookups per block run.
        namespace = types.ModuleType("tcg_block").__dict__
        namespace.update(_SHARED_GLOBALS)
        mmu = self.mmu
        namespace.update(mmu=mmu, low=mmu.low, R=mmu.r, W=mmu.w)
        namespace.update(self.typed_views)
        namespace.update(self.hint_misses)
        namespace.update(pending.consts)
        exec(code, namespace)
        self.translated += 1
        if pending.profile is not None:
            return pending.profile.counting(namespace["block"])
        return namespace["block"]  # type: ignore[return-value]


def generate_block(parts: Sequence[List[Insn]], bits: int, low_end: int,
                   emitters: Dict[Callable, Callable],
                   profile: Optional[BlockProfile] = None) -> Tuple[str, str, Dict[str, object]]:
    """The source of a function for blocks that jump to one another, entered at the first,
    its file name and the globals it needs beyond the shared ones: (source, filename, consts).

    A jump to a part's first instruction goes on at that part inside the function, in a loop
    over the parts (``lab``: the part to run), so a loop in the guest is a loop in Python,
    which PyPy's JIT compiles as one: a call among thousands of block functions costs about
    0.3 us there, as much as fifteen translated instructions. Registers stay in locals from
    part to part; each part begins with the flags in CpuState. Before each jump the function
    checks what the run loop checks between blocks (``budget``: the most instructions it may
    retire; an exit request; an interrupt RFLAGS.IF lets in).

    It needs nothing of the machine but ``low_end`` (where low RAM ends), so the compile
    helper runs it too; every constant but ``profile`` can be rebuilt from its name and the
    parts (:func:`block_consts`)."""
    insns = [insn for part in parts for insn in part]
    labels = {part[0].addr: label for label, part in enumerate(parts)}
    if not any(target in labels for target in _jump_targets(insns)):
        labels = {}  # straight code: no loop in Python either
    gen = BlockCodegen(insns, bits, low_end, labels, tuple(len(part) for part in parts))
    if profile is not None:
        gen.emit(f"{gen.const('PROFILE', profile)}.runs += 1")
    if labels:
        gen.emit("while True:")
        gen.indent += 1
    first = 0
    for label, part in enumerate(parts):
        gen.part_start, gen.part_last = first, first + len(part) - 1
        if labels:
            gen.emit(f"{'if' if label == 0 else 'elif'} lab == {label}:")
            gen.indent += 1
            gen.emit(f"pc = {first}")
            gen.flags = None
            gen.dirty = set()
            gen.hints = {}  # a part is entered from several places
            gen.ended = False
        _translate_part(gen, part, first, emitters, profile)
        if labels:
            gen.indent -= 1
        first += len(part)
    gen.consts.update(block_consts(("ADDR", "OFF") if labels else ("ADDR",), parts))
    source = _source(gen, gen.lines)  # its dead flag locals go as it is compiled
    return source, block_filename(insns[0]), gen.consts


def block_consts(names: Sequence[str], parts: Sequence[List[Insn]]) -> Dict[str, object]:
    """The constants ``names`` of a block translated from ``parts``: what the compile helper's
    code is run with, rebuilt from this process's own instructions. ``H<k>``/``I<k>``: the
    handler of instruction k and the instruction (a fallback); ``ADDR``: each instruction's
    address; ``OFF``: each one's index in its part. ValueError for any other name."""
    insns = [insn for part in parts for insn in part]
    consts: Dict[str, object] = {}
    for name in names:
        if name == "ADDR":
            consts[name] = tuple(insn.addr for insn in insns)
        elif name == "OFF":
            consts[name] = tuple(k for part in parts for k in range(len(part)))
        elif name[:1] in ("H", "I") and name[1:].isdigit() and int(name[1:]) < len(insns):
            insn = insns[int(name[1:])]
            consts[name] = insn.handler if name[0] == "H" else insn
        else:
            raise ValueError(f"a block has no constant {name!r}")
    return consts


def _translate_part(gen: BlockCodegen, part: List[Insn], first: int,
                    emitters: Dict[Callable, Callable], profile: Optional[BlockProfile]) -> None:
    last = first + len(part) - 1
    for k, insn in enumerate(part, first):
        gen.index = k
        gen.wrote_slow = False
        gen.insn_indent = gen.indent
        emitter = emitters.get(insn.handler)
        mark = len(gen.lines)
        saved = (set(gen.dirty), set(gen.ever_dirty), gen.flags, dict(gen.fault_sources),
                 set(gen.pc_set), set(gen.used), gen.uses_memory, gen.uses_stack,
                 set(gen.segs_used), dict(gen.hints))
        if emitter is not None:
            try:
                emitter(gen, insn)
            except Untranslatable:
                del gen.lines[mark:]
                (gen.dirty, gen.ever_dirty, gen.flags, gen.fault_sources, gen.pc_set,
                 gen.used, gen.uses_memory, gen.uses_stack, gen.segs_used,
                 gen.hints) = saved
                gen.indent = gen.insn_indent
                gen.pending = gen.pending_key = gen.update_read = None
                gen.a_unset = False
                emitter = None
        if emitter is None:
            _fallback(gen, insn, k, last)
            if profile is not None:
                profile.fallbacks.append(insn)
            if gen.ended:
                return
            continue
        if gen.ended:
            return
        if gen.wrote_slow:
            gen.emit("if brk:")
            gen.indent += 1
            gen.exit(f"{insn.next_rip:#x}", k + 1)
            gen.indent -= 1
    gen.jump(part[-1].next_rip, last + 1)

def _fallback(gen: BlockCodegen, insn: Insn, k: int, last: int) -> None:
    """Run ``insn`` through its interpreter handler with CpuState in sync."""
    handler = gen.const(f"H{k}", insn.handler)
    operand = gen.const(f"I{k}", insn)
    gen.sync_out()
    gen.emit(f"s.rip = {insn.next_rip:#x}")
    gen.emit(f"pc = {-1 - k}")
    gen.emit(f"{handler}(cpu, {operand})")
    gen.dirty = set()
    gen.flags = None
    gen.hints = {}  # the handler may have moved any register, or changed the paging
    if k == last:
        gen.emit(f"return {gen.retired(k + 1)}")
        gen.ended = True
        return
    gen.emit("if cpu.break_block:")
    gen.emit(f"    return {gen.retired(k + 1)}")
    gen.emit("#RELOAD")

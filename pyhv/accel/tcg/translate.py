"""Block translator: each decoded basic block becomes one generated Python function.

The function holds the guest registers it touches in locals (``r0`` … ``r15``), loaded at
entry and stored back at every exit. Arithmetic flags stay lazy and are resolved at
translation time: a flag-setting instruction ``k`` leaves its operands and result in locals
``fa<k>``/``fb<k>``/``fr<k>`` (``fc<k>``: the carry kept by inc/dec), and a consumer
(jcc, setcc, cmovcc) that follows in the same block reads an expression specialised for
that operation and size (``cmp; jne`` becomes ``fa3 != fb3``). Only at an exit are the
lazy flags written to ``CpuState.cc_*`` (see :mod:`.flags`). Immediates, displacements
and RIP-relative addresses are folded into the source as constants.

Memory goes through a fast path: the MMU's per-access-kind TLB dicts (``mmu.r``/``mmu.w``)
give a physical page base; a hit inside low RAM reads or writes the RAM memoryview directly,
anything else calls ``mmu.read``/``mmu.write`` (page walk, page-crossing, MMIO, writes to
pages holding translated code, which invalidate blocks and end this one).

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
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from .decoder import Insn
from .faults import GuestFault
from .flags import (CC_ADC, CC_ADD, CC_DEC, CC_EAGER, CC_INC, CC_LOGIC, CC_SBB, CC_SUB, PARITY,
                    condition, get_cf, materialize)
from .insns.rmw import read_for_update
from .state import ARITH_FLAGS, GPR_NAMES

MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
SIGN = {1: 0x80, 2: 0x8000, 4: 0x8000_0000, 8: 0x8000_0000_0000_0000}
M64 = 0xFFFF_FFFF_FFFF_FFFF
NUM_GPRS = len(GPR_NAMES)

BlockFunction = Callable[..., int]


class Untranslatable(Exception):
    """Raised by an instruction translator for a form it does not cover: use the handler."""


# Helpers every generated function sees as globals.
_SHARED_GLOBALS = {
    "GuestFault": GuestFault, "PARITY": PARITY, "condition": condition, "get_cf": get_cf,
    "read_for_update": read_for_update, "materialize": materialize,
    "U2": struct.Struct("<H").unpack_from, "U4": struct.Struct("<I").unpack_from,
    "U8": struct.Struct("<Q").unpack_from, "P2": struct.Struct("<H").pack_into,
    "P4": struct.Struct("<I").pack_into, "P8": struct.Struct("<Q").pack_into,
}


class FlagSource:
    """The lazy-flag state an instruction left, known at translation time."""

    __slots__ = ("index", "op", "size")

    def __init__(self, index: int, op: int, size: int) -> None:
        self.index = index
        self.op = op
        self.size = size


class BlockCodegen:
    """Builds the source of one block function; instruction translators call its methods."""

    def __init__(self, insns: List[Insn], bits: int, low_limit: int) -> None:
        self.insns = insns
        self.bits = bits
        self.low_limit = low_limit
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
        self.consts: Dict[str, object] = {}
        self.index = 0  # the instruction being translated
        self.ended = False  # the block's last instruction already emitted its exits
        self._temp = 0
        self.wrote_slow = False

    # --- low-level emission -----------------------------------------------------------
    def emit(self, line: str) -> None:
        self.lines.append("    " * self.indent + line)

    def temp(self, prefix: str = "v") -> str:
        self._temp += 1
        return f"{prefix}{self._temp}"

    def const(self, name: str, value: object) -> str:
        self.consts[name] = value
        return name

    def may_fault(self) -> None:
        """The current instruction may raise a guest fault: make the handler know it."""
        k = self.index
        if k not in self.fault_sources:
            self.fault_sources[k] = self.flags
            self.emit(f"pc = {k}")

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
        """The whole 64-bit register after writing ``value`` (masked) at ``size`` bytes."""
        base = r - 16 if r >= 16 else r
        self.used.add(base)
        if size == 8 or size == 4:
            return value
        if size == 2:
            return f"(r{r} & 0xFFFFFFFFFFFF0000) | ({value})"
        if r >= 16:
            return f"(r{base} & 0xFFFFFFFFFFFF00FF) | (({value}) << 8)"
        return f"(r{r} & 0xFFFFFFFFFFFFFF00) | ({value})"

    def set_reg(self, r: int, size: int, value: str) -> None:
        """Store ``value`` (already masked to ``size``) with the architecture's merge rules."""
        base = r - 16 if r >= 16 else r
        self.dirty.add(base)
        self.ever_dirty.add(base)
        self.emit(f"r{base} = {self.merged(r, size, value)}")

    # --- addresses and memory -----------------------------------------------------------
    def wrap64(self, name: str, low: bool = True, high: bool = True) -> None:
        """Bring local ``name`` back into 0..2**64-1 after a 64-bit add (high) or sub (low).

        A test and a rare correction instead of ``& 0xFFFF_FFFF_FFFF_FFFF``: on PyPy that
        mask is a long integer and would turn every 64-bit operation into a bigint one.
        """
        if low and high:
            self.emit(f"if {name} < 0 or {name} >> 64: {name} &= {M64:#x}")
        elif low:
            self.emit(f"if {name} < 0: {name} += {M64 + 1:#x}")
        else:
            self.emit(f"if {name} >> 64: {name} &= {M64:#x}")

    def offset(self, i: Insn) -> str:
        """Expression for the offset of ``i``'s memory operand in its segment."""
        mask = MASK[i.adsize]
        terms = []
        if i.base >= 0:
            self.used.add(i.base)
            terms.append(f"r{i.base}")
        if i.index >= 0:
            self.used.add(i.index)
            terms.append(f"(r{i.index} << {i.scale})" if i.scale else f"r{i.index}")
        if not terms:
            return f"{i.disp & mask:#x}"
        if i.adsize != 8:
            if i.disp:
                terms.append(f"{i.disp:#x}")
            return f"(({' + '.join(terms)}) & {mask:#x})"
        disp = i.disp - (1 << 64) if i.disp >> 63 else i.disp
        if len(terms) == 1 and not disp:
            return terms[0]
        if disp:
            terms.append(f"{disp:#x}" if disp > 0 else f"- {-disp:#x}")
        self.emit(f"o = {' + '.join(terms)}".replace("+ -", "-"))
        self.wrap64("o", low=disp < 0, high=disp >= 0 or len(terms) > 2)
        return "o"

    def address(self, i: Insn) -> str:
        """Emit ``a = `` the linear address of ``i``'s memory operand (as :func:`ea`)."""
        offset = self.offset(i)
        if i.seg < 0:
            self.emit(f"a = {offset}")
        else:
            self.segs_used.add(i.seg)
            self.emit(f"a = {offset} + sb{i.seg}")
        return "a"

    def load(self, addr: str, size: int, update: bool = False) -> str:
        """Emit a read of ``size`` bytes at linear ``addr``; returns the value's local.

        ``update``: the destination of a read-modify-write, which the CPU checks for write
        access before reading (a fault reports W=1); the write TLB serves the fast path.
        """
        self.uses_memory = True
        self.may_fault()
        value = self.temp()
        if addr != "a":
            self.emit(f"a = {addr}")
        self.emit(f"t = {'W' if update else 'R'}.get(a >> 12)")
        if size == 1:
            self.emit(f"if t is not None and t < {self.low_limit:#x}:")
            self.emit(f"    {value} = low[t | (a & 4095)]")
        else:
            self.emit(f"if t is not None and t < {self.low_limit:#x} and (a & 4095) <= {4096 - size}:")
            self.emit(f"    {value} = U{size}(low, t | (a & 4095))[0]")
        self.emit("else:")
        if update:
            self.emit(f"    {value} = read_for_update(cpu, a, {size})")
        else:
            self.emit(f"    {value} = mmu.read(a, {size})")
        return value

    def store(self, addr: str, size: int, value: str) -> None:
        """Emit a write of ``value`` (masked to ``size``) at linear ``addr``."""
        self.uses_memory = True
        self.may_fault()
        if addr != "a":
            self.emit(f"a = {addr}")
        self.emit("t = W.get(a >> 12)")
        if size == 1:
            self.emit(f"if t is not None and t < {self.low_limit:#x}:")
            self.emit(f"    low[t | (a & 4095)] = {value}")
        else:
            self.emit(f"if t is not None and t < {self.low_limit:#x} and (a & 4095) <= {4096 - size}:")
            self.emit(f"    P{size}(low, t | (a & 4095), {value})")
        self.emit("else:")
        self.emit(f"    mmu.write(a, {size}, {value})")
        # A write to a page with translated code (or an MMIO exit request) ends the block.
        self.emit("    brk = cpu.break_block")
        self.wrote_slow = True

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
            self.emit(f"sp = r4 - {size}")
            self.wrap64("sp", high=False)
            self.store("sp", size, value)
            self.set_reg(4, 8, "sp")
        else:
            self.emit(f"sp = (r4 - {size}) & smask")
            self.store("ssb + sp", size, value)
            self.set_reg(4, 8, "(r4 & ~smask) | sp")

    def pop(self, size: int) -> str:
        """Emit a pop; RSP is committed at once (the value is loaded before that)."""
        self.uses_stack = True
        self.used.add(4)
        if self.bits == 64:
            value = self.load("r4", size)
            self.emit(f"sp = r4 + {size}")
            self.wrap64("sp", low=False)
            self.set_reg(4, 8, "sp")
        else:
            self.emit("sp = r4 & smask")
            value = self.load("ssb + sp", size)
            self.set_reg(4, 8, f"(r4 & ~smask) | ((sp + {size}) & smask)")
        return value

    # --- lazy flags -------------------------------------------------------------------
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
        """Emit ``fr<k> = a ± b`` mod 2**64 without long-integer masks; returns ``fr<k>``."""
        name = f"fr{self.index}"
        if b.startswith("0x") and int(b, 16) >> 63:
            # A negative immediate: add its two's complement the other way round.
            b = f"{(1 << 64) - int(b, 16):#x}"
            subtract = not subtract
        self.emit(f"{name} = {a} {'-' if subtract else '+'} {b}")
        self.wrap64(name, low=subtract, high=not subtract)
        return name

    def set_eager(self, size: int, res: str, cf: str, of: str) -> None:
        """Flags computed now (shifts): ZF/SF/PF from ``res``, CF and OF given as 0/1."""
        k = self.index
        self.emit(f"fr{k} = {res}")
        self.emit(f"fl{k} = PARITY[fr{k} & 255] | (64 if fr{k} == 0 else 0) | "
                  f"(128 if fr{k} >= {SIGN[size]:#x} else 0) | ({cf}) | (({of}) << 11)")
        self.flags = FlagSource(k, CC_EAGER, size)

    def carry(self) -> str:
        """Expression for CF as 0/1 from the current flag source."""
        src = self.flags
        if src is None:
            return "get_cf(s)"
        k = src.index
        if src.op == CC_ADD:
            return f"(1 if fr{k} < fa{k} else 0)"
        if src.op == CC_SUB:
            return f"(1 if fa{k} < fb{k} else 0)"
        if src.op == CC_LOGIC:
            return "0"
        if src.op == CC_EAGER:
            return f"(fl{k} & 1)"
        if src.op == CC_ADC:
            return f"(1 if fr{k} < fa{k} or (fc{k} and fr{k} == fa{k}) else 0)"
        if src.op == CC_SBB:
            return f"(1 if fa{k} < fb{k} or (fc{k} and fa{k} == fb{k}) else 0)"
        return f"fc{k}"

    def arith_flags(self) -> str:
        """Emit the six arithmetic flags as RFLAGS bits into a local; returns its name.

        For instructions that change only some flags (rotates) or none (a shift by CL of
        0). The lazy source goes to CpuState first, which is harmless: every exit and the
        fault handler write the flags again.
        """
        src = self.flags
        if src is not None and src.op == CC_EAGER:
            return f"fl{src.index}"
        for line in self.flag_writeback(src):
            self.emit(line)
        name = self.temp("fx")
        self.emit("materialize(s)")
        self.emit(f"{name} = s.rflags & {ARITH_FLAGS:#x}")
        return name

    def condition(self, cc: int) -> str:
        """Python truth expression for condition code ``cc`` of jcc/setcc/cmovcc."""
        src = self.flags
        if src is not None and (src.op == CC_ADC or src.op == CC_SBB):
            for line in self.flag_writeback(src):
                self.emit(line)
            return f"condition(s, {cc})"
        if src is None:
            return f"condition(s, {cc})"
        k, op, sign = src.index, src.op, SIGN[src.size]
        a, b, r = f"fa{k}", f"fb{k}", f"fr{k}"
        zf = f"{r} == 0"
        sf = f"{r} >= {sign:#x}"
        pf = f"PARITY[{r} & 255]"
        if op == CC_SUB:
            table = (f"({a} ^ {b}) & ({a} ^ {r}) & {sign:#x}", f"{a} < {b}", f"{a} == {b}",
                     f"{a} <= {b}", sf, pf, f"({a} ^ {sign:#x}) < ({b} ^ {sign:#x})",
                     f"({a} ^ {sign:#x}) <= ({b} ^ {sign:#x})")
        else:
            if op == CC_ADD:
                cf, of = f"{r} < {a}", f"({a} ^ {r}) & ({b} ^ {r}) & {sign:#x}"
            elif op == CC_LOGIC:
                cf, of = "", ""
            elif op == CC_INC:
                cf, of = f"fc{k}", f"{r} == {sign:#x}"
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
            return [f"s.rflags = (s.rflags & {~ARITH_FLAGS & M64:#x}) | fl{k}", "s.cc_op = 0"]
        out = [f"s.cc_op = {src.op}", f"s.cc_size = {src.size}", f"s.cc_a = fa{k}",
               f"s.cc_b = fb{k}", f"s.cc_res = fr{k}"]
        if src.op in (CC_INC, CC_DEC, CC_ADC, CC_SBB):
            out.append(f"s.cc_cf = fc{k}")
        return out

    # --- exits ------------------------------------------------------------------------
    def sync_out(self) -> None:
        """Store the dirty registers and the lazy flags to CpuState."""
        for r in sorted(self.dirty):
            self.emit(f"regs[{r}] = r{r}")
        for line in self.flag_writeback(self.flags):
            self.emit(line)

    def exit(self, rip: str, retired: int) -> None:
        self.sync_out()
        self.emit(f"s.rip = {rip}")
        self.emit(f"return {retired}")


def _source(gen: BlockCodegen, body: List[str]) -> str:
    """Wrap the body with the prologue (locals loaded) and the precise-fault handler."""
    head = ["def block(cpu, s):", "    regs = s.regs"]
    load = []
    if gen.uses_memory:
        load += ["mmu = cpu.mmu", "low = mmu.low", "R = mmu.r", "W = mmu.w", "brk = False"]
    if gen.uses_stack and gen.bits != 64:
        load += ["smask = cpu.stack_mask", "ssb = s.segs[2].base"]
    for seg in sorted(gen.segs_used):
        load.append(f"sb{seg} = s.segs[{seg}].base")
    load += [f"r{r} = regs[{r}]" for r in sorted(gen.used)]
    out = head + ["    " + line for line in load]
    out.append("    pc = 0")
    out.append("    try:")
    for line in body:
        if line.strip() == "#RELOAD":
            pad = line[:len(line) - len(line.lstrip())]
            out += [pad + line2 for line2 in load]
        else:
            out.append(line)
    out.append("    except GuestFault as fault:")
    out.append("        if pc < 0:")
    out.append("            k = -1 - pc")
    out.append("            cpu.fault_retired = k + 1 if fault.trap else k")
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
    out.append("        cpu.fault_retired = pc")
    out.append("        raise")
    return "\n".join(out) + "\n"


_FLAG_LOCAL = re.compile(r"\bf[abcrl]\d+\b")
_FLAG_DEF = re.compile(r"^\s*(?:if )?(f[abcrl]\d+) (?:=|<|>>) ")


def _prune_flag_locals(source: str) -> str:
    """Drop assignments to flag locals nothing reads (most flags die unread).

    Each line is matched once; the rounds (a dead ``fc3 = … fr1 …`` can make ``fr1`` dead)
    only recount the kept lines' cached names.
    """
    lines = source.split("\n")
    parsed = []
    for line in lines:
        match = _FLAG_DEF.match(line)
        defined = match.group(1) if match is not None else None
        names = _FLAG_LOCAL.findall(line) if "f" in line else []
        parsed.append((line, defined, [name for name in names if name != defined]))
    for _ in range(3):
        counts: Dict[str, int] = {}
        for _line, _defined, reads in parsed:
            for name in reads:
                counts[name] = counts.get(name, 0) + 1
        kept = [entry for entry in parsed if entry[1] is None or counts.get(entry[1], 0) > 0]
        if len(kept) == len(parsed):
            break
        parsed = kept
    return "\n".join(entry[0] for entry in parsed)


class BlockProfile:
    """How often one translated block ran, and which of its instructions fell back."""

    __slots__ = ("insns", "runs", "fallbacks")

    def __init__(self, insns: List[Insn]) -> None:
        self.insns = insns
        self.runs = 0
        self.fallbacks: List[Insn] = []


class Translator:
    """Turns a block's decoded instructions into a compiled function ``block(cpu, s)``.

    The function runs the block (or a prefix of it, when an instruction ends it early),
    leaves RIP and the registers in ``cpu.s`` and returns the number of instructions retired.
    """

    def __init__(self, low_end: int, emitters: Dict[Callable, Callable]) -> None:
        self.low_limit = low_end - 4095  # a page base below this lies wholly in low RAM
        self.emitters = emitters
        self.translated = 0
        self.seconds = 0.0  # spent translating, for the benchmarks
        self.keep_source = False
        self.last_source = ""
        # When a list, every block translated from now on counts its runs: the translator
        # appends a BlockProfile per block (bench/tcg_kernel.py reads them).
        self.profiles: Optional[List[BlockProfile]] = None

    def translate(self, insns: List[Insn], bits: int) -> BlockFunction:
        started = time.perf_counter()
        gen = BlockCodegen(insns, bits, self.low_limit)
        if self.profiles is not None:
            profile = BlockProfile(insns)
            self.profiles.append(profile)
            gen.emit(f"{gen.const('PROFILE', profile)}.runs += 1")
        last = len(insns) - 1
        for k, insn in enumerate(insns):
            gen.index = k
            gen.wrote_slow = False
            emitter = self.emitters.get(insn.handler)
            mark = len(gen.lines)
            saved = (set(gen.dirty), set(gen.ever_dirty), gen.flags, dict(gen.fault_sources),
                     set(gen.used), gen.uses_memory, gen.uses_stack, set(gen.segs_used))
            if emitter is not None:
                try:
                    emitter(gen, insn)
                except Untranslatable:
                    del gen.lines[mark:]
                    (gen.dirty, gen.ever_dirty, gen.flags, gen.fault_sources, gen.used,
                     gen.uses_memory, gen.uses_stack, gen.segs_used) = saved
                    emitter = None
            if emitter is None:
                self._fallback(gen, insn, k, last)
                if self.profiles is not None:
                    profile.fallbacks.append(insn)
                continue
            if gen.ended:
                break
            if gen.wrote_slow:
                gen.emit("if brk:")
                gen.indent += 1
                gen.exit(f"{insn.next_rip:#x}", k + 1)
                gen.indent -= 1
        if not gen.ended:
            gen.exit(f"{insns[last].next_rip:#x}", last + 1)
        gen.consts["ADDR"] = tuple(insn.addr for insn in insns)
        source = _prune_flag_locals(_source(gen, gen.lines))
        namespace = dict(_SHARED_GLOBALS)
        namespace.update(gen.consts)
        code = compile(source, f"<tcg block {insns[0].addr:#x}>", "exec")
        exec(code, namespace)
        self.translated += 1
        self.seconds += time.perf_counter() - started
        if self.keep_source:
            self.last_source = source
        return namespace["block"]  # type: ignore[return-value]

    @staticmethod
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
        if k == last:
            gen.emit(f"return {k + 1}")
            gen.ended = True
            return
        gen.emit(f"if cpu.break_block:")
        gen.emit(f"    return {k + 1}")
        gen.emit("#RELOAD")

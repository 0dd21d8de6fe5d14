"""The software vCPU: block cache and run loop.

Guest code is decoded once per basic block (a run of instructions up to a branch, a
mode-changing instruction, the end of a page or 64 instructions) and cached by the block's
physical address. Each block is a list of decoded :class:`Insn` with their handlers bound,
so the run loop does no decoding and no dispatch-table lookups in steady state.
A write to a page holding blocks drops them (see :mod:`.mmu`). The next step turns each
cached block into generated Python source with registers in locals (``translate.py``).
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Tuple

from ...bus import Bus
from ...cpu_model import CpuModel, pyhv64
from ...cpu_state import CpuBootState
from ...errors import ConfigError
from ...lifecycle import Lifecycle
from ...memory import GuestMemory
from ...runtime_env import ON_PYPY
from . import insns  # noqa: F401  (fills the decoder's table)
from .bulk import BULK_HANDLERS
from .decoder import END, Insn, decode
from .faults import GuestFault, PF
from .hints import HOT, PART, WARM_RUNS, BlockHints, block_key
from .insns.control import call_rel, jcc, jmp_rel
from .interrupts import TripleFault, raise_exception, raise_interrupt
from .mmu import ACCESS_FETCH, Mmu
from .operands import STACK_MASK_64
from .state import CS, IF, SS, CpuState, signed64
from .translate import PendingBlock, Translator, successors
from .translate_insns import EMITTERS

MAX_BLOCK_INSNS = 64
# What one translated function may cover (Cpu._region): blocks joined where a conditional
# jump falls through (whole Debian boot on PyPy, pairs side by side: 5 against 3: 39.4/40.1 s,
# 47.0/48.5 s; 8 against 5: 48.6/49.8 s, 48.8/47.5 s), and then the blocks of the loops it is
# in that ran at least 1/LOOP_PART_SHARE as often as a block before it is translated, up to
# REGION_PARTS blocks and REGION_INSNS instructions in all.
FALL_THROUGH_PARTS = 5
LOOP_PART_SHARE = 8
REGION_PARTS = 24
REGION_INSNS = 256
# Decoded instructions kept for reuse (Cpu._decoded), per code width, before the cache starts
# over. The Debian boot decodes 492,000 instructions in building its blocks, 291,000 of
# them different: blocks begin inside other blocks (at jump targets) and are built again
# after writes to their pages.
DECODED_LIMIT = 500_000
# Writes to a page with blocks that miss them all before the page's blocks are dropped whole.
CODE_WRITE_MISSES = 64
# A block is translated after this many interpreted runs. Translating costs about 1 ms
# (generating and compiling its source) and, on PyPy, the JIT then compiles each block
# function on its own, while PyPy's JIT-compiled interpreter is not far behind (the whole
# Debian boot, bench/tcg_kernel.py: 76 s interpreted alone). So PyPy translates only the
# hottest blocks. Whole boot, pairs of runs side by side (CPU seconds): 400 against 800:
# 67.0/65.0; 800/1600: 70.4/66.0; 1600/3200: 62.1/58.3; 3200/12,800: 57.6/57.1 (2,000 and
# 785 blocks translated). With superblocks (below), 6,400: against 3,200: 39.1/41.4 and
# 39.1/40.8 s; against 1,600: 3,200 won 40.2/44.0 and 40.8/43.7 s; 12,800 and 6,400 were
# even (40.1/40.4, 38.7/39.1 s). CPython, whose interpreter pays for converting registers to
# unsigned, keeps 32: 126 s against 133 s with 400, 121.6 s against 120.4 s with 64.
# PYHV_TCG_TRANSLATE_AFTER overrides it (0: translate at once; "off": never translate),
# so the whole test suite can run through the translator or the interpreter alone.
def _translate_after_setting() -> Optional[int]:
    value = os.environ.get("PYHV_TCG_TRANSLATE_AFTER",
                           "6400" if ON_PYPY else "32")
    if value == "off":
        return None
    if not value.isdigit():
        raise ConfigError(f"PYHV_TCG_TRANSLATE_AFTER={value!r}: expected a number of runs "
                          "(0: translate at once) or 'off'")
    return int(value)


TRANSLATE_AFTER = _translate_after_setting()
# Runs a block may go on interpreted while the compile helper translates it, before the run
# loop waits for the code (a block in a loop would otherwise run slowly meanwhile).
COMPILE_WAIT_RUNS = 32
MASK64 = 0xFFFF_FFFF_FFFF_FFFF

# On PyPy, the run loop calls thousands of distinct block functions from one call site. The
# JIT inlines a callee behind a guard on its code object, so every other block fails that
# guard and finishes in the (slow) blackhole interpreter: about 850 ns per call with 2,000
# functions. Calling through residual_call keeps the JIT out of the callee: about 275 ns,
# and 19.1 s -> 15.4 s on the first 60 M instructions of the Debian boot.
try:
    from pypyjit import residual_call as _call_opaque
except ImportError:  # CPython: a plain call is already the cheapest
    _call_opaque = None

# PyPy's JIT defaults suit programs with a few hot loops; the software CPU has thousands of
# block functions and a run loop whose guards fail along thousands of paths. Compiling a
# function after 100 calls (not 1,619) and a bridge after 60 guard failures (not 200),
# each in the blackhole interpreter until then, took the whole Debian boot (603M
# instructions, bench/tcg_kernel.py) from 112 s to 77-87 s of CPU; 20 or 5 failures were
# slower again (95 s, 104 s). Most traces are block functions without a loop, so the loop
# unrolling pass (all of enable_opts but "unroll") mostly costs compile time: 80.9 -> 77.1 s
# and 73.4 -> 71.9 s, two pairs of runs side by side. Traces stop at 2,000 operations (not
# 6,000): the JIT spent 8.2 s of a 46 s boot tracing, and long traces of cold paths were the
# costliest; pairs of whole boots, trace_limit=2000 against the default: 44.8/46.8 s,
# 42.6/50.1 s, 44.1/48.3 s; against 1,500: 45.1/50.9 s; 1,000 and 3,000 were no better.
# Later, with the boot at 25-29 s: a function compiled after 200 calls, not 100, was faster in
# five pairs of five (29.3/27.6, 28.9/27.9, 26.9/26.9, 26.5/26.0, 26.9/26.6 s); 150 was even
# with 200, 300 and 500 slower (by 0.9-2.4 s a pair).
# PYHV_PYPY_JIT replaces the string (pypyjit.set_param syntax).
PYPY_JIT_PARAMS = os.environ.get(
    "PYHV_PYPY_JIT", "function_threshold=200,trace_eagerness=60,trace_limit=2000,"
    "enable_opts=intbounds:rewrite:virtualize:string:pure:earlyforce:heap")
if _call_opaque is not None and PYPY_JIT_PARAMS:
    import pypyjit
    try:
        pypyjit.set_param(PYPY_JIT_PARAMS)
    except ValueError:
        raise ConfigError(f"PYHV_PYPY_JIT={PYPY_JIT_PARAMS!r}: not a PyPy JIT parameter string "
                          "(pypyjit.set_param syntax, e.g. 'function_threshold=100')") from None


class StopReason:
    HLT = "hlt"  # halted with no interrupt to wake it
    SHUTDOWN = "shutdown"  # triple fault: the CPU is in shutdown state
    BUDGET = "budget"  # max_instructions executed
    EXIT_REQUEST = "exit-request"  # a device or another thread asked the loop to return


class RunResult(NamedTuple):
    reason: str
    instructions: int
    detail: str = ""


# An empty chain slot: a RIP no code runs at (non-canonical, and above 32-bit IPs). Not -1,
# which is a 64-bit RIP in the signed form, and not 2**64, a long integer on PyPy.
NO_LINK = 0x7FFF_FFFF_FFFF_FFFF


class Block:
    """A decoded basic block; ``fn`` is its translated function once it ran ``heat`` times."""

    __slots__ = ("phys", "rip", "bits", "cs_base", "insns", "spans", "fn", "heat", "size",
                 "parts", "epoch", "rip0", "next0", "rip1", "next1", "links", "links_epoch",
                 "pending", "held_by")

    def __init__(self, phys: int, rip: int, bits: int, cs_base: int, insns: List[Insn],
                 spans: Dict[int, Tuple[int, int]]) -> None:
        self.phys = phys
        self.rip = rip
        self.bits = bits
        self.cs_base = cs_base
        self.insns = insns
        # Physical page -> (first, end) offsets of the instruction bytes the block holds
        # there: a write drops the block only where it overlaps them.
        self.spans = spans
        self.fn: Optional[Callable[..., int]] = None
        self.pending: Optional[PendingBlock] = None  # on its way from the compile helper
        self.held_by: Optional[Block] = None  # a pending block whose translation joins it
        self.heat = 0
        self.size = len(insns)
        self.parts = 1  # the blocks its translation covers (see Cpu._region)
        # (virtual page, physical page base) of each page a direct jump or call led into.
        self.links: Tuple[Tuple[int, int], ...] = ()
        self.links_epoch = -1  # the MMU epoch in which ``links`` were last found to hold
        # Chain: up to two successors (by RIP), valid while the MMU epoch is unchanged.
        self.epoch = -1
        self.rip0 = NO_LINK
        self.next0: Optional[Block] = None
        self.rip1 = NO_LINK
        self.next1: Optional[Block] = None

    def link(self, rip: int, successor: "Block", epoch: int) -> None:
        if self.epoch != epoch:
            self.epoch = epoch
            self.rip1 = NO_LINK
            self.next1 = None
        elif self.rip0 != NO_LINK:
            self.rip1 = rip
            self.next1 = successor
            return
        self.rip0 = rip
        self.next0 = successor


def _widen(spans: Dict[int, Tuple[int, int]], page: int, first: int, end: int) -> None:
    """Make ``spans[page]`` cover the offsets [first, end) too."""
    span = spans.get(page)
    spans[page] = (first, end) if span is None else (min(span[0], first), max(span[1], end))


class Cpu:
    """One x86-64 vCPU running on guest RAM, with port I/O and MMIO buses.

    External interrupts: an interrupt controller sets :attr:`interrupt_request` (and may
    call :meth:`kick`); when RFLAGS.IF allows, the CPU calls :attr:`acknowledge_interrupt`,
    which returns the vector to deliver (or None when the request went away).
    """

    def __init__(self, memory: GuestMemory, pio_bus: Bus, mmio_bus: Bus,
                 lifecycle: Optional[Lifecycle] = None, cpu_model: Optional[CpuModel] = None,
                 apic_id: int = 0) -> None:
        self.s = CpuState()
        self.cpu_model = cpu_model if cpu_model is not None else pyhv64()
        self.apic_id = apic_id
        # The platform's local APIC (its MSRs) and TSC; None in bare unit tests.
        self.lapic = None
        self.tsc = None
        self.memory = memory
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.lifecycle = lifecycle
        self.mmu = Mmu(memory, mmio_bus, self.s)
        self.mmu.on_code_write = self._invalidate_code
        self.blocks: Dict[int, Block] = {}
        self.page_blocks: Dict[int, List[int]] = {}
        # Instructions decoded, by code width and address, with their bytes: a block that
        # begins inside another or is built again after a code write reuses them where the
        # bytes are the same (see DECODED_LIMIT).
        self._decoded: Dict[int, Dict[int, Tuple[bytes, Insn]]] = {16: {}, 32: {}, 64: {}}
        self._code_write_misses: Dict[int, int] = {}  # by page, see _invalidate_code
        # Device (DMA) writes into pages holding blocks, from device threads: the run loop
        # drops those blocks before it runs another one (see _device_write).
        self._device_writes: Deque[Tuple[int, int]] = collections.deque()
        memory.device_write_watchers.append(self._device_write)
        self.mmu.code_pages = self.page_blocks
        self.halted = False
        self.shutdown: Optional[str] = None
        self.interrupt_request = False
        self.acknowledge_interrupt: Callable[[], Optional[int]] = lambda: None
        self.exit_request = False
        self.break_block = False
        self.inhibit_irq = False
        self.bits = 16
        self._fetch_cs_base = -1  # the CS base the chains were built under (update_mode)
        self.stack_mask = 0xFFFF
        self.debug_regs = [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400]
        # Guest instructions retired over the CPU's life (updated when run() returns).
        self.instructions_retired = 0
        # A block is translated to Python after it ran this many times interpreted
        # (None: never translate, the interpreter runs everything).
        self.translate_after: Optional[int] = TRANSLATE_AFTER
        self.translator = Translator(self.mmu, EMITTERS)
        # What an earlier boot of this guest translated (see .hints); None: no hints kept.
        self.hints: Optional[BlockHints] = None
        self.fault_retired = 0  # set by a translated block that raises a guest fault
        # Translated blocks by RIP, valid while Mmu.epoch equals jump_epoch (see _run).
        self.jump_cache: Dict[int, Block] = {}
        self.jump_epoch = -1
        self.update_mode()

    # --- state --------------------------------------------------------------------------
    def load_state(self, boot: CpuBootState) -> None:
        self.s.load_boot_state(boot)
        self.reset_caches()

    def set_registers(self, values: dict) -> None:
        """Set registers from a plain dict (names as in :meth:`CpuState.to_dict`)."""
        self.s.update_from_dict(values)
        self.reset_caches()

    def registers(self) -> dict:
        return self.s.to_dict()

    def reset_caches(self) -> None:
        self.mmu.flush()
        self.mmu.set_user(self.s.cpl == 3)
        self.halted = False
        self.shutdown = None
        self.update_mode()

    def update_mode(self) -> None:
        """Recompute cached mode bits after CS, SS, CR0 or EFER changed."""
        s = self.s
        bits = s.code_bits
        stack_bits = s.stack_bits
        self.stack_mask = STACK_MASK_64 if stack_bits == 64 else (0xFFFF_FFFF if stack_bits == 32 else 0xFFFF)
        self.break_block = True
        # Chains and the jump cache map RIP to a block; that holds while the code width and
        # the CS base do (paging changes flush the MMU, which moves the epoch itself). Every
        # iretq and interrupt reloads CS, and bumping the epoch on each undid the chains:
        # 45,000 bumps in the Debian kernel's first 60 M instructions.
        cs_base = s.segs[CS].base if bits != 64 else 0
        if bits != self.bits or cs_base != self._fetch_cs_base:
            self.bits = bits
            self._fetch_cs_base = cs_base
            self.mmu.epoch += 1

    def after_io(self) -> None:
        """A port or MMIO access may have asked the VM to stop: leave the run loop."""
        if self.lifecycle is not None and self.lifecycle.pending is not None:
            self.exit_request = True
            self.break_block = True

    def kick(self) -> None:
        """Make :meth:`run` look at interrupt_request / exit_request soon (any thread)."""
        self.exit_request = True

    # --- block cache --------------------------------------------------------------------
    def _invalidate_code(self, phys: int, size: int) -> None:
        """A write to [phys, phys + size) hit a page holding blocks: drop the blocks it overlaps.

        Only those: the kernel patches its text a few bytes at a time (alternatives, jump
        labels, static calls), and dropping every block of each page it patched made the
        Debian boot decode 15,000 blocks again and translate many of them twice. A page whose
        writes keep missing its blocks (data beside code) is dropped whole after
        CODE_WRITE_MISSES writes, so that its writes take the fast path again.
        """
        first, last = phys >> 12, (phys + size - 1) >> 12
        dropped: List[Block] = []
        for ppn in (first,) if first == last else range(first, last + 1):
            keys = self.page_blocks.get(ppn)
            if keys is None:
                continue
            lo = max(phys - (ppn << 12), 0)
            hi = min(phys + size - (ppn << 12), 0x1000)
            misses = self._code_write_misses.get(ppn, 0)
            kept = []
            for key in keys:
                block = self.blocks.get(key)
                span = block.spans.get(ppn) if block is not None else None
                if span is None:
                    continue  # a stale key: the block now at ``key`` lies elsewhere
                if misses >= CODE_WRITE_MISSES or (span[0] < hi and lo < span[1]):
                    dropped.append(block)
                else:
                    kept.append(key)
            if kept and len(kept) == len(keys):
                self._code_write_misses[ppn] = misses + 1
            if kept:
                self.page_blocks[ppn] = kept
            else:
                del self.page_blocks[ppn]
                self._code_write_misses.pop(ppn, None)
        if not dropped:
            return
        for block in dropped:
            if self.blocks.get(block.phys) is block:
                del self.blocks[block.phys]
            for page in block.spans:
                keys = self.page_blocks.get(page)
                if keys is not None and block.phys in keys:
                    keys = self.page_blocks[page] = [key for key in keys if key != block.phys]
                    if not keys:
                        del self.page_blocks[page]
                        self._code_write_misses.pop(page, None)
        self.break_block = True
        self.mmu.epoch += 1

    def _device_write(self, gpa: int, length: int) -> None:
        # Any thread. Most buffers a device fills hold no code: a look at each page's entry
        # in page_blocks, and nothing else. The run loop must not run a block translated
        # from the old bytes: the kick makes it look at _device_writes before the next one.
        if length <= 0:
            return
        pages = self.page_blocks
        if any(ppn in pages for ppn in range(gpa >> 12, ((gpa + length - 1) >> 12) + 1)):
            self._device_writes.append((gpa, length))
            self.kick()

    def _drop_device_writes(self) -> None:
        while self._device_writes:
            gpa, length = self._device_writes.popleft()
            self._invalidate_code(gpa, length)

    def flush_blocks(self) -> None:
        self.blocks.clear()
        for decoded in self._decoded.values():
            decoded.clear()
        self.page_blocks.clear()
        self._code_write_misses.clear()
        self.mmu.epoch += 1

    def _build_block(self, rip: int, phys: int) -> Block:
        s = self.s
        bits = self.bits
        cs_base = s.segs[CS].base if bits != 64 else 0
        linear = (cs_base + rip) & MASK64
        start_page = linear >> 12
        page_left = 0x1000 - (linear & 0xFFF)
        code = self.mmu.phys_bytes(phys, page_left)
        if code is None:
            code = bytes(self.mmu.phys_read(phys + k, 1) for k in range(page_left))
        spans: Dict[int, Tuple[int, int]] = {}
        span_page, span_offset = phys >> 12, phys & 0xFFF  # the page and offset of code[0]
        next_page = -1
        next_fault: Optional[GuestFault] = None
        extended = False
        insns: List[Insn] = []
        pos = 0
        ipmask = MASK64 if bits == 64 else (0xFFFF_FFFF if bits == 32 else 0xFFFF)
        cur = rip
        start = rip  # the IP whose byte is code[0]
        links: List[Tuple[int, int]] = []
        decoded = self._decoded[bits]
        if len(decoded) > DECODED_LIMIT:
            decoded.clear()
        while len(insns) < MAX_BLOCK_INSNS and pos < page_left:
            if not extended and page_left - pos < 15:
                extended = True
                try:
                    next_phys = self.mmu.translate((linear + page_left) & MASK64, ACCESS_FETCH)
                    more = self.mmu.phys_bytes(next_phys, 15)
                    if more is not None:
                        code = code + more
                        next_page = next_phys >> 12
                except GuestFault as fault:
                    next_fault = fault
            known = decoded.get(cur)
            try:
                if known is not None and code.startswith(known[0], pos):
                    insn = known[1]
                else:
                    insn = decode(code, pos, cur, bits)
                    decoded[cur] = (code[pos:pos + insn.length], insn)
            except IndexError:
                if insns:
                    break
                if next_fault is not None:
                    raise next_fault from None
                raise GuestFault(PF, 0x10, cr2=(linear + page_left) & MASK64) from None
            except GuestFault:
                if insns:
                    break  # the faulting instruction starts its own block
                raise
            if insn.rep and insn.handler in BULK_HANDLERS:
                insn.handler = BULK_HANDLERS[insn.handler]
            insns.append(insn)
            end = pos + insn.length
            _widen(spans, span_page, span_offset + pos, span_offset + min(end, page_left))
            if end > page_left:  # the instruction ends on the next page
                _widen(spans, next_page, 0, end - page_left)
            pos = end
            cur = insn.next_rip
            if insn.handler is jmp_rel or insn.handler is call_rel:
                # A direct jump or call goes on in the same block at its target: one dispatch
                # fewer. Inside this page only forward (no loop is unrolled); into another
                # page only to code not in the block yet, and the block then holds that
                # page's fetch translation in ``links``, checked before each full lookup.
                target = (insn.imm - start) & ipmask
                if len(insns) >= MAX_BLOCK_INSNS:
                    break
                if pos <= target < page_left:
                    pos, cur = target, insn.imm
                    continue
                target_linear = (cs_base + insn.imm) & MASK64
                if any(i.addr == insn.imm for i in insns):
                    break
                try:
                    target_phys = self.mmu.translate(target_linear, ACCESS_FETCH)
                except GuestFault:
                    break
                page_code = self.mmu.phys_bytes(target_phys & ~0xFFF, 0x1000)
                if page_code is None:
                    break
                code, pos, page_left = page_code, target_linear & 0xFFF, 0x1000
                span_page, span_offset = target_phys >> 12, 0
                extended = False
                start, cur = (insn.imm - pos) & ipmask, insn.imm
                linear = target_linear - pos
                if target_linear >> 12 != start_page:
                    # The lookup that found this block checked its first page's translation.
                    links.append((signed64(target_linear) >> 12, target_phys & ~0xFFF))
                continue
            if insn.spec.flags & END or insn.handler is None:
                break
        block = Block(phys, rip, bits, cs_base, insns, spans)
        block.links = tuple(links)
        if self.hints is not None and self.hints.previous and self.translate_after:
            # A first boot has no hints to look up: it names (hashes) only what it notes.
            self._apply_hint(block)
        self.blocks[phys] = block
        for ppn in spans:
            keys = self.page_blocks.get(ppn)
            if keys is None:
                # A page's first block: drop its write-TLB entries (a scan of the whole TLB).
                # Later ones need not: the MMU never maps a code page for writing again.
                self.page_blocks[ppn] = keys = []
                self.mmu.protect_code_page(ppn)
            keys.append(phys)
        return block

    def _region(self, block: Block) -> Tuple[List[List[Insn]], List[Block]]:
        """The parts to translate for ``block`` (see Translator.translate_region).

        The first part is ``block`` with the blocks it falls through to where its conditional
        jumps are not taken (up to FALL_THROUGH_PARTS blocks, MAX_BLOCK_INSNS instructions):
        one straight run of code that leaves where a jump is taken. The other parts are the
        blocks of the loops ``block`` is in, so that a loop goes round inside the function.
        Those must have run 1/LOOP_PART_SHARE as many times as a block before it is
        translated (cold paths would cost translating and compiling for nothing);
        REGION_PARTS blocks and REGION_INSNS instructions at most.

        Only blocks already decoded, on the page of ``block``, each on that page alone (no
        jump they followed left it). ``block`` takes over their bytes in its spans, so that a
        write to any of them drops it too, and the first part's length in ``size``, the most
        one call runs before it checks the budget."""
        if block.links or len(block.spans) != 1:
            return [block.insns], []
        (page, (first, end)), = block.spans.items()
        linear_page = ((block.cs_base + block.rip) & MASK64) >> 12

        def part_at(rip: int, heat: int) -> Optional[Block]:
            linear = (block.cs_base + rip) & MASK64
            if linear >> 12 != linear_page:
                return None
            part = self.blocks.get((page << 12) | (linear & 0xFFF))
            if (part is None or part.rip != rip or part.bits != block.bits
                    or part.cs_base != block.cs_base or part.links
                    or list(part.spans) != [page] or part.heat < heat):
                return None
            return part

        insns = block.insns
        tail = block
        members: List[Block] = []  # the blocks joined to ``block``
        for _ in range(FALL_THROUGH_PARTS - 1):
            last = tail.insns[-1]
            tail = part_at(last.next_rip, 0) if last.handler is jcc else None
            if tail is None or len(insns) + len(tail.insns) > MAX_BLOCK_INSNS:
                break
            insns = insns + tail.insns
            first, end = min(first, tail.spans[page][0]), max(end, tail.spans[page][1])
            members.append(tail)
        parts = [insns]
        block.size = total = len(insns)

        # The warm blocks reachable from ``block`` on its page, and the edges between them.
        heat = (self.translate_after or 0) // LOOP_PART_SHARE
        found: Dict[int, Block] = {block.rip: block}
        edges: Dict[int, List[int]] = {}
        todo = collections.deque([block])
        while todo and len(found) < 4 * REGION_PARTS:
            part = todo.popleft()
            edges[part.rip] = targets = []
            for rip in successors(part.insns):
                nxt = found.get(rip) or part_at(rip, heat)
                if nxt is None:
                    continue
                targets.append(rip)
                if rip not in found:
                    found[rip] = nxt
                    todo.append(nxt)
        # Those from which ``block`` can be reached again: the loops it is in.
        into: Dict[int, List[int]] = {}
        for rip, targets in edges.items():
            for target in targets:
                into.setdefault(target, []).append(rip)
        looping = {block.rip}
        todo_rips = [block.rip]
        while todo_rips:
            for rip in into.get(todo_rips.pop(), ()):
                if rip not in looping:
                    looping.add(rip)
                    todo_rips.append(rip)
        looping.discard(block.rip)
        for rip in sorted(looping, key=lambda rip: rip - block.rip):
            part = found[rip]
            if len(parts) == REGION_PARTS or total + len(part.insns) > REGION_INSNS:
                continue
            parts.append(part.insns)
            members.append(part)
            total += len(part.insns)
            first, end = min(first, part.spans[page][0]), max(end, part.spans[page][1])
        if self.hints is not None:
            for member in members:
                self._note_hint(member, PART)
        block.spans = {page: (first, end)}
        block.parts = len(parts)
        return parts, members

    def _translate(self, block: Block) -> Optional[Callable[..., int]]:
        """The block's function; None while the compile helper translates it."""
        pending = block.pending
        if pending is None:
            holder = block.held_by
            if holder is not None:
                if holder.pending is not None and self.blocks.get(holder.phys) is holder:
                    return None  # its code is in the holder's translation, on its way
                block.held_by = None
            if self.hints is not None:
                self._note_hint(block, HOT)  # before _region widens the block's spans
            parts, members = self._region(block)
            started = self.translator.start_region(parts, block.bits)
            if not isinstance(started, PendingBlock):
                return started
            block.pending = started
            # While the helper translates, the blocks joined to ``block`` run interpreted and
            # heat up, where they stay cold once ``block``'s function runs their code: each
            # would be translated again on its own.
            for member in members:
                member.held_by = block
            return None
        overdue = block.heat > self.translate_after + COMPILE_WAIT_RUNS
        fn = self.translator.finish(pending, wait=overdue)
        if fn is not None:
            block.pending = None
        return fn

    # --- hot-block hints (see .hints) -----------------------------------------------------
    def _block_key(self, block: Block) -> Optional[str]:
        code = []
        for ppn, (first, end) in block.spans.items():
            piece = self.mmu.phys_bytes((ppn << 12) | first, end - first)
            if piece is None:
                return None  # code outside RAM: no hint
            code.append(piece)
        return block_key(block.rip, block.bits, code)

    def _apply_hint(self, block: Block) -> None:
        key = self._block_key(block)
        kind = None if key is None else self.hints.kind(key)
        if kind == HOT:
            block.heat = max(block.heat, self.translate_after - WARM_RUNS)
        elif kind == PART:
            block.heat = max(block.heat, self.translate_after // LOOP_PART_SHARE)

    def note_warm_blocks(self) -> None:
        """Note as PART every block that ran often enough to join a region."""
        if self.hints is None or not self.translate_after:
            return
        for block in self.blocks.values():
            if block.fn is None and block.heat >= self.translate_after // LOOP_PART_SHARE:
                self._note_hint(block, PART)

    def _note_hint(self, block: Block, kind: str) -> None:
        key = self._block_key(block)
        if key is not None:
            self.hints.note(key, kind)

    def _links_hold(self, block: Block) -> bool:
        """Whether the pages ``block`` jumped into still map to the code it was built from."""
        mmu = self.mmu
        for vpn, base in block.links:
            found = mmu.x.get(vpn)
            if found is None:
                try:
                    found = mmu.translate(vpn << 12, ACCESS_FETCH) & ~0xFFF
                except GuestFault:
                    return False
            if found != base:
                return False
        # Fetch translations change only with the epoch (TLB flushes, INVLPG).
        block.links_epoch = mmu.epoch
        return True

    # --- run loop -----------------------------------------------------------------------
    def run(self, max_instructions: int, whole_blocks: bool = False) -> RunResult:
        """Run until HLT, shutdown, an exit request, or ``max_instructions`` executed.

        With ``whole_blocks`` a block begun before the budget ran out runs to its end, so
        up to one block (MAX_BLOCK_INSNS) more may execute. A run loop whose slices end on
        timer deadlines wants that: a block cut at the budget resumes at an instruction where
        no block begins, which costs decoding a new block that is rarely met again (in the
        Debian boot, 3,000 of them in one 1,300-instruction function)."""
        result = self._run(max_instructions, whole_blocks)
        self.instructions_retired += result.instructions
        return result

    def _run(self, max_instructions: int, whole_blocks: bool) -> RunResult:
        s = self.s
        mmu = self.mmu
        blocks = self.blocks
        executed = 0
        chain_from: Optional[Block] = None  # the translated block that ran last, to link
        chain_epoch = -1
        jump_cache = self.jump_cache
        call_opaque = _call_opaque
        if self.shutdown is not None:
            return RunResult(StopReason.SHUTDOWN, 0, self.shutdown)
        while True:
            if self.exit_request:
                self.exit_request = False
                if self._device_writes:
                    self._drop_device_writes()
                return RunResult(StopReason.EXIT_REQUEST, executed)
            if self.interrupt_request and s.rflags & IF and not self.inhibit_irq:
                vector = self.acknowledge_interrupt()
                if vector is not None:
                    try:
                        raise_interrupt(self, vector)
                    except TripleFault as err:
                        return self._enter_shutdown(str(err), executed)
                self.interrupt_request = False if vector is None else self.interrupt_request
            if self.halted:
                return RunResult(StopReason.HLT, executed)
            budget = max_instructions - executed
            if budget <= 0:
                return RunResult(StopReason.BUDGET, executed)
            rip = s.rip
            if rip >> 63 == 1:  # an unsigned 64-bit RIP (an iret, an interrupt): see .state
                rip = s.rip = signed64(rip)
            insn = None
            fn = None
            try:
                if self.bits == 64:
                    linear = rip
                else:
                    linear = (s.segs[CS].base + rip) & MASK64
                base = mmu.x.get(linear >> 12)
                phys = mmu.translate(linear, ACCESS_FETCH) if base is None else base | (linear & 0xFFF)
                block = blocks.get(phys)
                if (block is None or block.rip != rip or block.bits != self.bits
                        or (block.links and block.links_epoch != mmu.epoch
                            and not self._links_hold(block))):
                    block = self._build_block(rip, phys)
                todo = block.insns
                self.break_block = False
                if self.inhibit_irq or (block.size > budget and not whole_blocks):
                    # The instruction after sti / mov ss, and the tail of the budget, run
                    # interpreted, one instruction at a time.
                    if self.inhibit_irq:
                        todo = todo[:1]
                        self.inhibit_irq = False
                    else:
                        todo = todo[:budget]
                else:
                    if chain_from is not None and chain_epoch == mmu.epoch and block.fn is not None:
                        chain_from.link(rip, block, chain_epoch)
                    chain_from = None
                    fn = block.fn
                    if fn is None and self.translate_after is not None:
                        block.heat += 1
                        if block.heat > self.translate_after:
                            fn = block.fn = self._translate(block)
                    if fn is not None:
                        # Translated blocks run back to back, following their chains, until
                        # something needs the checks above.
                        if self.jump_epoch != mmu.epoch:
                            jump_cache.clear()
                            self.jump_epoch = mmu.epoch
                        jump_cache[rip] = block
                        while True:
                            if call_opaque is None:
                                executed += fn(self, s, max_instructions - executed)
                            else:
                                executed += call_opaque(fn, self, s, max_instructions - executed)
                            # A pending interrupt matters only once IF allows it: the early
                            # boot and every irqsave section run with one pending and IF clear,
                            # and must keep following the chains. Whatever sets IF (sti, popf,
                            # iret) is seen here after its block.
                            if (self.break_block or self.exit_request
                                    or (self.interrupt_request and s.rflags & IF)):
                                break
                            rip = s.rip
                            epoch = mmu.epoch
                            if block.epoch == epoch and rip == block.rip0:
                                block = block.next0
                            elif block.epoch == epoch and rip == block.rip1:
                                block = block.next1
                            else:
                                # Returns and indirect jumps miss the two chain slots; the
                                # jump cache (translated blocks by RIP, valid for one epoch,
                                # like a chain) keeps them out of the full lookup above.
                                successor = jump_cache.get(rip) if self.jump_epoch == epoch else None
                                if successor is None:
                                    chain_from, chain_epoch = block, epoch
                                    break
                                if block.epoch != epoch or block.rip0 == NO_LINK or block.rip1 == NO_LINK:
                                    block.link(rip, successor, epoch)
                                block = successor
                            if (executed >= max_instructions if whole_blocks
                                    else block.size > max_instructions - executed):
                                break
                            fn = block.fn  # break_block is still False: no reset needed
                        continue
                for insn in todo:
                    s.rip = insn.next_rip
                    insn.handler(self, insn)
                    executed += 1
                    if self.break_block:
                        break
            except GuestFault as fault:
                if fn is not None:
                    executed += self.fault_retired  # the block left RIP and registers exact
                elif insn is not None and not fault.trap:
                    s.rip = insn.addr
                elif insn is not None:
                    executed += 1
                try:
                    raise_exception(self, fault)
                except TripleFault as err:
                    return self._enter_shutdown(str(err), executed)
            except TripleFault as err:
                return self._enter_shutdown(str(err), executed)

    def _enter_shutdown(self, reason: str, executed: int) -> RunResult:
        self.shutdown = f"triple fault: {reason}"
        if self.lifecycle is not None:
            self.lifecycle.reset(self.shutdown)
        return RunResult(StopReason.SHUTDOWN, executed, self.shutdown)

    def step(self) -> RunResult:
        return self.run(1)

    @property
    def ss_base(self) -> int:
        return self.s.segs[SS].base

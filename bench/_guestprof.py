"""Where the guest spends the software CPU's time: its RIP sampled by guest function.

Every ``interval`` seconds of the process's CPU time (SIGPROF) the handler records the guest's
RIP, and optionally the first qwords of its stack; the report names each sample's function from
the guest kernel's symbols, a ``/proc/kallsyms`` dump (pyhv loads the kernel at its link
address, so one dump fits every boot of that kernel):

    .venv-pypy/bin/pyhv guest run -- cat /proc/kallsyms > kallsyms.txt

A sample is a moment of host CPU time, so a function's share is what running it costs pyhv
(decoding, interpreting, translating included), not its share of the guest's instructions.
The callers come from a scan of the stack for kernel text addresses (no frame pointers or
unwind tables needed; a stale return address can slip in). The handler runs between Python
bytecodes (on PyPy where the JIT's code checks for signals), so samples lean towards block
boundaries, and ticks that come before it ran are merged into one (on PyPy about half of
them); over thousands of samples the ranking of the functions holds.
"""

from __future__ import annotations

import bisect
import collections
import signal
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from pyhv.accel.tcg.mmu import ADDR_MASK  # a page-table entry's address bits

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
USER = "(user)"  # a RIP in the lower half: guest user space
UNKNOWN = "(unknown)"
TEXT_TYPES = frozenset("tTwW")


class Symbols:
    """Guest kernel symbols by address, from a /proc/kallsyms dump. Data symbols are kept as
    boundaries: an address in data is not code, however close a function lies before it."""

    def __init__(self, entries: Sequence[Tuple[int, str, bool]]) -> None:
        ordered = sorted(entries)
        self.addresses = [address for address, _, _ in ordered]
        self.names = [name for _, name, _ in ordered]
        self.text = [text for _, _, text in ordered]

    @classmethod
    def parse(cls, text: str) -> "Symbols":
        """``address type name [module]`` per line; lines that are not that (a console's other
        output, a CR at the end) are skipped."""
        entries = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 3 or len(fields[1]) != 1:
                continue
            try:
                address = int(fields[0], 16)
            except ValueError:
                continue
            if address:  # kptr_restrict shows every address as zero: useless
                entries.append((address, fields[2], fields[1] in TEXT_TYPES))
        if not any(text for _, _, text in entries):
            raise ValueError("no text symbols with addresses (is it a /proc/kallsyms dump, read as root?)")
        return cls(entries)

    def _index(self, address: int) -> int:
        return bisect.bisect_right(self.addresses, address & MASK64) - 1

    def name(self, rip: int) -> str:
        if rip & MASK64 < 1 << 47:
            return USER
        index = self._index(rip)
        return self.names[index] if index >= 0 else UNKNOWN

    def is_kernel_text(self, value: int) -> bool:
        index = self._index(value)
        return index >= 0 and self.text[index] and value & MASK64 >= 1 << 47


class Sample:
    __slots__ = ("rip", "stack")

    def __init__(self, rip: int, stack: List[int]) -> None:
        self.rip = rip
        self.stack = stack


def callers(symbols: Symbols, stack: Sequence[int], depth: int) -> List[str]:
    """The functions of the kernel text addresses on ``stack``, innermost first, a run of the
    same one counted once."""
    chain: List[str] = []
    for value in stack:
        if symbols.is_kernel_text(value):
            name = symbols.name(value)
            if not chain or chain[-1] != name:
                chain.append(name)
                if len(chain) == depth:
                    break
    return chain


def _physical(cpu, linear: int) -> Optional[int]:
    """The physical address of ``linear`` by the guest's 4-level page tables, read without
    the MMU: its walk fills the TLB and sets accessed bits, and the signal handler may run in
    the middle of the MMU's own work. None where it is not mapped, or not in long mode."""
    s = cpu.s
    if not s.efer & (1 << 10) or not s.cr0 & (1 << 31):
        return None
    table = s.cr3 & ADDR_MASK
    for shift in (39, 30, 21, 12):
        raw = cpu.mmu.phys_bytes(table + ((linear >> shift) & 0x1FF) * 8, 8)
        if raw is None:
            return None
        entry = int.from_bytes(raw, "little")
        if not entry & 1:
            return None
        if shift == 12 or (shift in (30, 21) and entry & 0x80):  # a 4 KiB, 1 GiB or 2 MiB page
            page_mask = (1 << shift) - 1
            return (entry & ADDR_MASK & ~page_mask) | (linear & page_mask)
        table = entry & ADDR_MASK
    return None


def peek_qwords(cpu, linear: int, count: int) -> List[int]:
    """Up to ``count`` qwords of guest memory from ``linear`` up, stopping at an unmapped page;
    nothing in the CPU changes."""
    values: List[int] = []
    linear &= MASK64
    while len(values) < count:
        phys = _physical(cpu, linear)
        if phys is None:
            break
        in_page = min(count - len(values), (0x1000 - (linear & 0xFFF)) // 8)
        raw = cpu.mmu.phys_bytes(phys, 8 * in_page) if in_page else None
        if raw is None:
            break
        values += [int.from_bytes(raw[k:k + 8], "little") for k in range(0, len(raw), 8)]
        linear = (linear + 8 * in_page) & MASK64
    return values


class GuestProfiler:
    """Samples ``cpu`` (the software CPU) while started; ``stack_qwords`` > 0 also keeps that
    many qwords from the guest's RSP up, for :func:`callers`."""

    def __init__(self, interval: float = 0.002, stack_qwords: int = 0) -> None:
        self.interval = interval
        self.stack_qwords = stack_qwords
        self.samples: List[Sample] = []
        self._cpu = None
        self._previous: Optional[Callable] = None

    def start(self, cpu) -> None:
        self._cpu = cpu
        self._previous = signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        if self._previous is not None:
            signal.signal(signal.SIGPROF, self._previous)
        self._cpu = None

    def _sample(self, _signum, _frame) -> None:
        cpu = self._cpu
        if cpu is None:
            return
        stack = peek_qwords(cpu, cpu.s.regs[4], self.stack_qwords) if self.stack_qwords else []
        self.samples.append(Sample(cpu.s.rip & MASK64, stack))

    def report(self, symbols: Symbols, top: int, with_callers: int = 0, depth: int = 6) -> List[str]:
        """The ``top`` functions by share of the samples, then the commonest caller chains of
        the first ``with_callers`` of them."""
        total = len(self.samples)
        if not total:
            return ["guest profile: no samples"]
        by_function: Dict[str, List[Sample]] = collections.defaultdict(list)
        for sample in self.samples:
            by_function[symbols.name(sample.rip)].append(sample)
        ranked = sorted(by_function.items(), key=lambda item: -len(item[1]))
        lines = [f"guest profile: {total:,} samples, one per {self.interval * 1000:g} ms of CPU time"]
        for name, samples in ranked[:top]:
            lines.append(f"  {100.0 * len(samples) / total:5.1f}% {len(samples):>7,}  {name}")
        for name, samples in ranked[:with_callers]:
            if name == USER:
                continue
            chains = collections.Counter(" < ".join(callers(symbols, s.stack, depth)) for s in samples)
            lines.append(f"  callers of {name}:")
            for chain, count in chains.most_common(3):
                lines.append(f"    {count:>6,}  {chain or '(none found on the stack)'}")
        return lines

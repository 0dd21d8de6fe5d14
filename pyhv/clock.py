"""Virtual time for the software CPU: clocks, a timer queue and the TSC.

Every emulated timer (the 8254 PIT, the local APIC timer, the TSC) reads one :class:`Clock`,
so what the guest measures with one it can check against another: Linux calibrates the TSC
against PIT channel 2 and the APIC timer against the PIT tick, and both agree with
:data:`TSC_HZ` because they share a time base.

Two clocks:

* :class:`HostClock`: host monotonic time since the clock was made. The guest sees real
  time passing, as under KVM.
* :class:`InstructionClock`: time advances only when the CPU reports executed instructions
  (``advance(n)``), ``ns_per_insn`` nanoseconds each, like QEMU's ``-icount``. A run is then
  reproducible: the same guest takes its timer interrupts at the same instructions. When
  the CPU halts, the run loop warps the clock to the next timer deadline (``idle``).
  The CPU must bring the clock up to date (``advance`` by the instructions executed so
  far) before every port or MMIO access and every rdtsc, not only at the end of a run
  slice: Linux calibrates the TSC by reading PIT channel 2 and the TSC in a tight loop
  (``quick_pit_calibrate``, ``pit_calibrate_tsc``), and a clock frozen for a whole slice
  makes both calibrations fail. QEMU's -icount ends a block at I/O for the same reason.

The CPU loop polls the :class:`TimerQueue` after each block with one integer comparison,
``if clock.now_ns() >= timers.earliest: timers.run_expired(now)``; ``earliest`` is
:data:`NEVER` when nothing is armed.
"""

from __future__ import annotations

import heapq
import threading
import time
from typing import Callable, List, Optional

from .errors import ConfigError

NS_PER_SECOND = 1_000_000_000

# A deadline later than any the guest can program: 2**62 ns is about 146 years.
NEVER = 1 << 62

# The TSC frequency every vCPU reports. 1 GHz makes a tick one nanosecond, so rdtsc costs a
# clock read and nothing else. CPUID leaf 0x15 (EAX=1, EBX=1, ECX=TSC_HZ) and leaf 0x16
# (EAX=TSC_HZ // 10**6) say so to guests that read them (Linux does on Intel vendors only;
# on AMD it calibrates against PIT channel 2, which reads this same clock).
TSC_HZ = 1_000_000_000


class ClockError(ConfigError):
    """A clock or TSC configured with an impossible rate."""


class Clock:
    """A source of virtual nanoseconds, monotonic, starting near 0."""

    def now_ns(self) -> int:
        raise NotImplementedError

    def idle(self, deadline_ns: int, wake: Optional[threading.Event] = None) -> None:
        """Let time pass while the CPU is halted, until ``deadline_ns`` or until ``wake`` is set."""
        raise NotImplementedError


class HostClock(Clock):
    """Host monotonic time, in ns since this clock was created."""

    def __init__(self) -> None:
        self._origin = time.monotonic_ns()

    def now_ns(self) -> int:
        return time.monotonic_ns() - self._origin

    def idle(self, deadline_ns: int, wake: Optional[threading.Event] = None) -> None:
        delay = deadline_ns - self.now_ns()
        if delay <= 0:
            return
        seconds = min(delay, NEVER) / NS_PER_SECOND
        if wake is None:
            time.sleep(seconds)
        else:
            wake.wait(seconds)


class InstructionClock(Clock):
    """Deterministic time: ``ns_per_insn`` ns per executed instruction (QEMU's -icount).

    ``now`` is a plain int attribute, so the CPU loop may read it directly.
    """

    def __init__(self, ns_per_insn: int = 1, start_ns: int = 0) -> None:
        if ns_per_insn <= 0:
            raise ClockError(f"instruction clock: ns_per_insn must be a positive integer, got {ns_per_insn}")
        self.ns_per_insn = ns_per_insn
        self.now = start_ns

    def now_ns(self) -> int:
        return self.now

    def advance(self, instructions: int) -> None:
        """The CPU executed ``instructions`` more instructions."""
        self.now += instructions * self.ns_per_insn

    def advance_ns(self, ns: int) -> None:
        if ns < 0:
            raise ValueError(f"virtual time cannot go backwards ({ns} ns)")
        self.now += ns

    def warp_to(self, deadline_ns: int) -> None:
        """Jump forward to ``deadline_ns`` (never backwards)."""
        if deadline_ns > self.now:
            self.now = deadline_ns

    def idle(self, deadline_ns: int, wake: Optional[threading.Event] = None) -> None:
        # No wall time passes for a halted CPU: the next timer fires at once. An event from
        # another thread (serial input) is taken at the current virtual time instead.
        if wake is not None and wake.is_set():
            return
        if deadline_ns < NEVER:
            self.warp_to(deadline_ns)
        elif wake is not None:
            wake.wait()


class Timer:
    """One armed callback; the handle :meth:`TimerQueue.schedule` returns."""

    __slots__ = ("deadline", "callback", "armed", "_seq")

    def __init__(self, deadline: int, callback: Callable[[], None], seq: int) -> None:
        self.deadline = deadline
        self.callback = callback
        self.armed = True
        self._seq = seq

    def __lt__(self, other: "Timer") -> bool:
        # Equal deadlines fire in the order they were scheduled.
        if self.deadline != other.deadline:
            return self.deadline < other.deadline
        return self._seq < other._seq


class TimerQueue:
    """Callbacks ordered by deadline (virtual ns).

    Cancelling only marks the timer; it leaves the heap lazily, so schedule and cancel
    are O(log n) and O(1). ``earliest`` is the first live deadline, or :data:`NEVER`.
    """

    def __init__(self) -> None:
        self._heap: List[Timer] = []
        self._seq = 0
        self.earliest = NEVER

    def schedule(self, deadline_ns: int, callback: Callable[[], None]) -> Timer:
        """Call ``callback()`` from :meth:`run_expired` once virtual time reaches ``deadline_ns``."""
        self._seq += 1
        timer = Timer(deadline_ns, callback, self._seq)
        heapq.heappush(self._heap, timer)
        if deadline_ns < self.earliest:
            self.earliest = deadline_ns
        return timer

    def cancel(self, handle: Optional[Timer]) -> None:
        """Disarm ``handle``; cancelling a fired, cancelled or None handle does nothing."""
        if handle is None or not handle.armed:
            return
        handle.armed = False
        if handle.deadline == self.earliest:
            self._settle()

    def next_deadline(self) -> Optional[int]:
        return None if self.earliest == NEVER else self.earliest

    def __len__(self) -> int:
        return sum(1 for t in self._heap if t.armed)

    def _settle(self) -> None:
        heap = self._heap
        while heap and not heap[0].armed:
            heapq.heappop(heap)
        self.earliest = heap[0].deadline if heap else NEVER

    def run_expired(self, now_ns: int) -> int:
        """Fire every timer whose deadline is <= ``now_ns``, earliest first; returns how many.

        A callback may schedule or cancel timers, including ones that are due at once:
        they fire in this same call.
        """
        fired = 0
        heap = self._heap
        while heap and heap[0].deadline <= now_ns:
            timer = heapq.heappop(heap)
            if not timer.armed:
                continue
            timer.armed = False
            fired += 1
            timer.callback()
        self._settle()
        return fired


class Tsc:
    """The time-stamp counter: ``ticks = (now_ns * hz) / 10**9 + offset``.

    Writing the TSC (MSR 0x10) moves the offset, as on hardware; the rate never changes,
    which is what CPUID.80000007H:EDX[8] (invariant TSC) promises.
    """

    def __init__(self, clock: Clock, hz: int = TSC_HZ) -> None:
        if hz <= 0:
            raise ClockError(f"TSC frequency must be a positive number of Hz, got {hz}")
        self.clock = clock
        self.hz = hz
        self.offset = 0

    def ns_to_ticks(self, ns: int) -> int:
        if self.hz == NS_PER_SECOND:
            return ns
        return ns * self.hz // NS_PER_SECOND

    def ticks_to_ns(self, ticks: int) -> int:
        """The first nanosecond at which the counter has reached ``ticks`` (without offset)."""
        if self.hz == NS_PER_SECOND:
            return ticks
        return -(-ticks * NS_PER_SECOND // self.hz)

    def read(self) -> int:
        return (self.ns_to_ticks(self.clock.now_ns()) + self.offset) & 0xFFFF_FFFF_FFFF_FFFF

    def write(self, value: int) -> None:
        self.offset = value - self.ns_to_ticks(self.clock.now_ns())

    def deadline_to_ns(self, tsc_value: int) -> int:
        """The virtual time at which the TSC reads ``tsc_value`` (for the TSC-deadline timer)."""
        return self.ticks_to_ns(tsc_value - self.offset)

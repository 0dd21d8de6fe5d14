"""The local APIC timer: one-shot, periodic and TSC-deadline modes.

The timer counts the APIC bus clock divided by the divide configuration register. The bus
runs at :data:`APIC_BUS_HZ` (1 GHz, as KVM and QEMU report), so one count lasts ``divisor``
ns; Linux measures the rate against the PIT (``calibrate_APIC_clock``), so only consistency
with the shared clock matters. Missed periods coalesce: a periodic timer that fell behind
fires once and re-arms at the next period boundary after now, as the single IRR bit of
real hardware would.
"""

from __future__ import annotations

from typing import Callable, Optional

from ..clock import Clock, Timer, TimerQueue, Tsc

APIC_BUS_HZ = 1_000_000_000
BUS_CYCLE_NS = 1_000_000_000 // APIC_BUS_HZ

MODE_ONE_SHOT = 0
MODE_PERIODIC = 1
MODE_TSC_DEADLINE = 2


def divisor_of(divide_config: int) -> int:
    """The divisor the divide configuration register selects (bits 0, 1 and 3)."""
    code = (divide_config & 3) | ((divide_config & 8) >> 1)
    return 1 if code == 7 else 2 << code


class ApicTimer:
    """The counter behind the LVT timer entry; ``fire()`` is called at each expiry."""

    def __init__(self, clock: Clock, timers: TimerQueue, tsc: Tsc, fire: Callable[[], None]) -> None:
        self.clock = clock
        self.timers = timers
        self.tsc = tsc
        self.fire = fire
        self.mode = MODE_ONE_SHOT
        self.divide_config = 0
        self.divisor = 2
        self.initial_count = 0
        self.tsc_deadline = 0
        self.expire_ns = 0  # the next expiry, while armed
        self.period_ns = 0  # periodic mode: the reload interval
        self._timer: Optional[Timer] = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def _disarm(self) -> None:
        self.timers.cancel(self._timer)
        self._timer = None

    def _arm(self, expire_ns: int) -> None:
        self._disarm()
        self.expire_ns = expire_ns
        self._timer = self.timers.schedule(expire_ns, self._expired)

    def reset(self) -> None:
        self._disarm()
        self.mode = MODE_ONE_SHOT
        self.divide_config = 0
        self.divisor = 2
        self.initial_count = 0
        self.tsc_deadline = 0

    def set_mode(self, mode: int) -> None:
        """The LVT timer's mode field was written; changing it stops the timer."""
        if mode == self.mode:
            return
        self._disarm()
        self.mode = mode
        self.initial_count = 0
        self.tsc_deadline = 0

    def write_initial_count(self, count: int) -> None:
        if self.mode == MODE_TSC_DEADLINE:
            return  # ignored in TSC-deadline mode
        self.initial_count = count & 0xFFFF_FFFF
        if self.initial_count == 0:
            self._disarm()
            return
        span = self.initial_count * self.divisor * BUS_CYCLE_NS
        self.period_ns = span if self.mode == MODE_PERIODIC else 0
        self._arm(self.clock.now_ns() + span)

    def current_count(self) -> int:
        if self.mode == MODE_TSC_DEADLINE or not self.armed:
            return 0
        remaining = self.expire_ns - self.clock.now_ns()
        if remaining <= 0:
            return 0
        return min(-(-remaining // (self.divisor * BUS_CYCLE_NS)), self.initial_count)

    def write_divide_config(self, value: int) -> None:
        self.divide_config = value & 0xB
        divisor = divisor_of(value)
        if divisor == self.divisor:
            return
        if self.armed and self.mode != MODE_TSC_DEADLINE:
            # The counter keeps its value and counts on at the new rate.
            remaining = self.current_count()
            self.divisor = divisor
            if self.period_ns:
                self.period_ns = self.initial_count * divisor * BUS_CYCLE_NS
            self._arm(self.clock.now_ns() + remaining * divisor * BUS_CYCLE_NS)
        else:
            self.divisor = divisor

    def write_tsc_deadline(self, value: int) -> None:
        if self.mode != MODE_TSC_DEADLINE:
            return  # the MSR is ignored outside TSC-deadline mode
        self.tsc_deadline = value
        if value == 0:
            self._disarm()
        else:
            self._arm(self.tsc.deadline_to_ns(value))

    def read_tsc_deadline(self) -> int:
        return self.tsc_deadline if self.mode == MODE_TSC_DEADLINE else 0

    def _expired(self) -> None:
        self._timer = None
        if self.mode == MODE_PERIODIC and self.period_ns:
            now = self.clock.now_ns()
            missed = max(0, (now - self.expire_ns) // self.period_ns)
            self._arm(self.expire_ns + (missed + 1) * self.period_ns)
        elif self.mode == MODE_TSC_DEADLINE:
            self.tsc_deadline = 0
        self.fire()

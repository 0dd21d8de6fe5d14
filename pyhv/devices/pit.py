"""The 8254 programmable interval timer (ports 0x40-0x43) and system control port B (0x61).

Three counters run at 1.193182 MHz. Channel 0 drives ISA IRQ 0; channel 1 (DRAM refresh on
old PCs) has no consumer; channel 2 is gated by port 0x61 bit 0 and its output reads back
as port 0x61 bit 5, which is how Linux calibrates the TSC (``pit_calibrate_tsc``,
``quick_pit_calibrate``).

Nothing ticks: a counter stores the virtual time it was loaded and derives its count and
OUT from the :class:`~pyhv.clock.Clock`. Channel 0 arms one timer per OUT transition on the
:class:`~pyhv.clock.TimerQueue`, and drives IRQ 0 with OUT's level, so an edge-triggered
PIC input sees a rising edge per period (modes 2 and 3) or at terminal count (mode 0).

The six modes as the datasheet gives them (N = the count, 0 meaning 65536, or 10000 in BCD):
0 interrupt on terminal count (OUT low until N clocks passed), 1 hardware one-shot (starts
on a gate rising edge), 2 rate generator (OUT low for one clock every N), 3 square wave
(high for ceil(N/2), low for floor(N/2)), 4 software strobe and 5 hardware strobe (one low
clock after N). A new count restarts modes 0, 2, 3 and 4 at once (as KVM's in-kernel PIT
does), and arms modes 1 and 5 for the next trigger. A low gate pauses modes 0 and 4, holds
modes 2 and 3 with OUT high, and its rising edge restarts modes 1, 2, 3 and 5.
"""

from __future__ import annotations

from typing import List, Optional

from ..clock import NS_PER_SECOND, Clock, Timer, TimerQueue
from ..irq import IrqLine

PIT_BASE = 0x40
PIT_HZ = 1_193_182
SYSTEM_CONTROL_PORT = 0x61

CONTROL_OFFSET = 3
READ_BACK = 3  # the "channel" field value that selects the read-back command

ACCESS_LATCH, ACCESS_LSB, ACCESS_MSB, ACCESS_WORD = 0, 1, 2, 3

READ_BACK_NO_COUNT = 0x20  # active low: clear to latch the counts
READ_BACK_NO_STATUS = 0x10  # active low: clear to latch the status bytes

STATUS_OUT = 0x80
STATUS_NULL_COUNT = 0x40

# Port 0x61 (system control port B).
PORT61_GATE2 = 0x01
PORT61_SPEAKER = 0x02
PORT61_WRITABLE = 0x0F  # gate, speaker data, parity and channel check disables
PORT61_REFRESH = 0x10
PORT61_OUT2 = 0x20
# The refresh request bit toggles every 15.085 us on the PC/AT; firmware and old drivers
# busy-wait on it for short delays.
REFRESH_PERIOD_NS = 15_085


def _from_bcd(value: int) -> int:
    return ((value >> 12) & 0xF) * 1000 + ((value >> 8) & 0xF) * 100 + ((value >> 4) & 0xF) * 10 + (value & 0xF)


def _to_bcd(value: int) -> int:
    return ((value // 1000 % 10) << 12) | ((value // 100 % 10) << 8) | ((value // 10 % 10) << 4) | (value % 10)


def ticks_to_ns(ticks: int) -> int:
    """The first virtual ns at which ``ticks`` PIT clocks have elapsed."""
    return -(-ticks * NS_PER_SECOND // PIT_HZ)


class PitChannel:
    """One 8254 counter."""

    def __init__(self, index: int, clock: Clock, timers: Optional[TimerQueue] = None,
                 output: Optional[IrqLine] = None, gate: bool = True) -> None:
        self.index = index
        self.clock = clock
        self.timers = timers
        self.output = output
        self.gate = gate
        self._timer: Optional[Timer] = None
        self._next_tick = 0
        self.reset()

    def reset(self) -> None:
        """Back to the power-up state (the gate input is the board's, and stays)."""
        if self.timers is not None:
            self.timers.cancel(self._timer)
        self._timer = None
        # The datasheet leaves the power-up state undefined; an idle counter with OUT high
        # means a guest's first mode 2 or 3 programming raises no IRQ 0 edge until a full
        # period has passed, as under KVM's in-kernel PIT.
        self.mode = 2
        self.access = ACCESS_WORD
        self.bcd = False
        self.count = 0x10000  # N, already decoded (0 written means 65536, or 10000 in BCD)
        self.pending_count: Optional[int] = None  # modes 1 and 5: the count for the next trigger
        self.counting = False  # loaded (and, in modes 1 and 5, triggered)
        self.load_ns = 0
        self.paused_at: Optional[int] = None
        self.null_count = True
        self.latched_count: List[int] = []  # bytes still to read, in order
        self.latched_status: Optional[int] = None
        self.read_high = False  # word access: the next live read returns the MSB
        self.write_high = False
        self.write_low_byte = 0

    # --- time -----------------------------------------------------------------------------
    def _elapsed_ticks(self, now_ns: int) -> int:
        if self.paused_at is not None:
            now_ns = self.paused_at
        return (now_ns - self.load_ns) * PIT_HZ // NS_PER_SECOND

    def _out_at(self, ticks: int) -> bool:
        mode, n = self.mode, self.count
        if mode in (0, 1):
            return ticks >= n
        if mode == 2:
            return ticks % n != n - 1
        if mode == 3:
            return ticks % n < (n + 1) >> 1
        return ticks != n  # modes 4 and 5

    def _next_transition(self, ticks: int) -> Optional[int]:
        """The first tick after ``ticks`` at which OUT changes, or None."""
        mode, n = self.mode, self.count
        if mode in (0, 1):
            return n if ticks < n else None
        if mode in (2, 3):
            low_at = n - 1 if mode == 2 else (n + 1) >> 1
            period_start = ticks - ticks % n
            if ticks % n < low_at:
                return period_start + low_at
            return period_start + n
        if ticks < n:
            return n
        return n + 1 if ticks == n else None

    def _last_falling_edge(self, ticks: int) -> int:
        """The latest tick <= ``ticks`` where a periodic OUT went low (modes 2 and 3)."""
        n = self.count
        low_at = n - 1 if self.mode == 2 else (n + 1) >> 1
        return (ticks - low_at) // n * n + low_at

    def out(self, now_ns: Optional[int] = None) -> bool:
        """The OUT pin's level now."""
        if not self.counting:
            return self.mode != 0  # mode 0 drives OUT low from the control word on
        if self.mode in (2, 3) and not self.gate:
            return True
        if now_ns is None:
            now_ns = self.clock.now_ns()
        return self._out_at(self._elapsed_ticks(now_ns))

    def counter_value(self, now_ns: Optional[int] = None) -> int:
        """The counting element as the guest reads it (BCD-encoded in BCD mode)."""
        modulus = 10000 if self.bcd else 0x10000
        if not self.counting:
            value = self.count % modulus
        else:
            if now_ns is None:
                now_ns = self.clock.now_ns()
            ticks = self._elapsed_ticks(now_ns)
            n = self.count
            if self.mode in (2, 3) and not self.gate:
                ticks = 0
            if self.mode == 2:
                value = n - ticks % n
            elif self.mode == 3:
                value = n - (2 * ticks) % n
            else:
                value = (n - ticks) % modulus
            value %= modulus
        return _to_bcd(value) if self.bcd else value

    # --- the IRQ output -------------------------------------------------------------------
    def _update_output(self) -> None:
        """Drive the output line with OUT now, and arm a timer for its next change."""
        if self.output is None:
            return
        if self.timers is not None:
            self.timers.cancel(self._timer)
            self._timer = None
        now = self.clock.now_ns()
        self.output.set_level(self.out(now))
        if not self.counting or self.paused_at is not None or (self.mode in (2, 3) and not self.gate):
            return
        self._arm(self._next_transition(self._elapsed_ticks(now)))

    def _arm(self, tick: Optional[int]) -> None:
        if tick is None or self.timers is None:
            return
        self._next_tick = tick
        self._timer = self.timers.schedule(self.load_ns + ticks_to_ns(tick), self._on_transition)

    def _on_transition(self) -> None:
        # Evaluate OUT at the transition's own tick, not at "now": a late timer must still
        # produce the edge it was armed for.
        self._timer = None
        tick = self._next_tick
        self.output.set_level(self._out_at(tick))
        following = self._next_transition(tick)
        if following is not None and self.mode in (2, 3):
            now_ticks = self._elapsed_ticks(self.clock.now_ns())
            if now_ticks - following > self.count:
                # Far behind (a stalled host): coalesce the missed periods into the last one.
                following = max(following, self._last_falling_edge(now_ticks))
        self._arm(following)

    # --- programming ----------------------------------------------------------------------
    def control(self, value: int) -> None:
        """A control word for this channel (access mode != latch)."""
        self.access = (value >> 4) & 3
        mode = (value >> 1) & 7
        self.mode = mode & 3 if mode > 5 else mode  # 6 and 7 alias 2 and 3
        self.bcd = bool(value & 1)
        self.counting = False
        self.paused_at = None
        self.null_count = True
        self.read_high = False
        self.write_high = False
        self.latched_count = []
        self.pending_count = None
        self._update_output()

    def latch_count(self) -> None:
        if self.latched_count:
            return  # a second latch before the first was read is ignored
        value = self.counter_value()
        if self.access == ACCESS_LSB:
            self.latched_count = [value & 0xFF]
        elif self.access == ACCESS_MSB:
            self.latched_count = [value >> 8]
        else:
            self.latched_count = [value & 0xFF, value >> 8]

    def latch_status(self) -> None:
        if self.latched_status is not None:
            return
        mode = self.mode
        self.latched_status = ((STATUS_OUT if self.out() else 0) | (STATUS_NULL_COUNT if self.null_count else 0)
                               | (self.access << 4) | (mode << 1) | int(self.bcd))

    def _load(self, raw: int) -> None:
        count = _from_bcd(raw) if self.bcd else raw
        if count == 0:
            count = 10000 if self.bcd else 0x10000
        if self.mode in (2, 3) and count == 1:
            count = 2  # count 1 is illegal in modes 2 and 3; real parts behave erratically
        self.null_count = False
        if self.mode in (1, 5):
            # Armed: the count is taken at the next gate rising edge (the trigger).
            self.pending_count = count
            if not self.counting:
                self.count = count
            return
        self.count = count
        self._start(self.clock.now_ns())

    def _start(self, now_ns: int) -> None:
        if self.pending_count is not None:
            self.count = self.pending_count
            self.pending_count = None
        self.load_ns = now_ns
        self.counting = True
        self.paused_at = None if self.gate or self.mode not in (0, 4) else now_ns
        self._update_output()

    def write_count(self, value: int) -> None:
        value &= 0xFF
        if self.access == ACCESS_LSB:
            self._load(value)
        elif self.access == ACCESS_MSB:
            self._load(value << 8)
        elif not self.write_high:
            self.write_low_byte = value
            self.write_high = True
        else:
            self.write_high = False
            self._load(self.write_low_byte | (value << 8))

    def read(self) -> int:
        if self.latched_status is not None:
            value = self.latched_status
            self.latched_status = None
            return value
        if self.latched_count:
            return self.latched_count.pop(0)
        value = self.counter_value()
        if self.access == ACCESS_LSB:
            return value & 0xFF
        if self.access == ACCESS_MSB:
            return value >> 8
        high = self.read_high
        self.read_high = not high
        return value >> 8 if high else value & 0xFF

    def set_gate(self, level: bool) -> None:
        level = bool(level)
        if level == self.gate:
            return
        now = self.clock.now_ns()
        self.gate = level
        if self.mode in (0, 4):
            if self.counting:
                if not level:
                    self.paused_at = now
                elif self.paused_at is not None:
                    self.load_ns += now - self.paused_at
                    self.paused_at = None
        elif level and not self.null_count:
            self._start(now)  # rising edge: trigger (1, 5) or reload (2, 3)
            return
        self._update_output()


class Pit:
    """The 8254 with its three channels; channel 0 drives ``irq0``."""

    def __init__(self, clock: Clock, timers: TimerQueue, irq0: Optional[IrqLine]) -> None:
        self.clock = clock
        self.channels = [
            PitChannel(0, clock, timers, irq0),
            PitChannel(1, clock),
            PitChannel(2, clock, gate=False),
        ]
        self.port = _PitPorts(self)
        self.control_port = SystemControlPort(self, clock)
        if irq0 is not None:
            irq0.set_level(self.channels[0].out())

    def attach(self, pio_bus) -> None:
        pio_bus.attach(PIT_BASE, 4, self.port)
        pio_bus.attach(SYSTEM_CONTROL_PORT, 1, self.control_port)

    def reset(self) -> None:
        for channel in self.channels:
            channel.reset()
        if self.channels[0].output is not None:
            self.channels[0].output.set_level(self.channels[0].out())

    def write_control(self, value: int) -> None:
        select = value >> 6
        if select == READ_BACK:
            for index in range(3):
                if value & (2 << index):
                    channel = self.channels[index]
                    if not value & READ_BACK_NO_COUNT:
                        channel.latch_count()
                    if not value & READ_BACK_NO_STATUS:
                        channel.latch_status()
            return
        channel = self.channels[select]
        if (value >> 4) & 3 == ACCESS_LATCH:
            channel.latch_count()
        else:
            channel.control(value)


class _PitPorts:
    """Offsets 0-2: the channels' data ports; offset 3: the control word (write-only)."""

    def __init__(self, pit: Pit) -> None:
        self._pit = pit

    def read(self, offset: int, size: int) -> int:
        if offset == CONTROL_OFFSET:
            return 0xFF  # the control register cannot be read on the 8254
        return self._pit.channels[offset].read()

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == CONTROL_OFFSET:
            self._pit.write_control(value & 0xFF)
        else:
            self._pit.channels[offset].write_count(value)


class SystemControlPort:
    """Port 0x61: channel 2's gate and output, the speaker enable and the refresh toggle."""

    def __init__(self, pit: Pit, clock: Clock) -> None:
        self._channel2 = pit.channels[2]
        self._clock = clock
        self.latched_bits = 0

    def read(self, offset: int, size: int) -> int:
        now = self._clock.now_ns()
        value = self.latched_bits
        if (now // REFRESH_PERIOD_NS) & 1:
            value |= PORT61_REFRESH
        if self._channel2.out(now):
            value |= PORT61_OUT2
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.latched_bits = value & PORT61_WRITABLE
        self._channel2.set_gate(bool(value & PORT61_GATE2))

"""The 8254 PIT and port 0x61, driven through their ports on a virtual clock."""

from __future__ import annotations

from typing import List, Tuple

import pytest

from pyhv.bus import Bus
from pyhv.clock import InstructionClock, TimerQueue
from pyhv.devices.pit import PIT_HZ, REFRESH_PERIOD_NS, Pit, ticks_to_ns

CH0, CH2, CONTROL, PORT61 = 0x40, 0x42, 0x43, 0x61


class EdgeRecorder:
    """An IrqLine that logs (virtual ns, level) for every change."""

    def __init__(self, clock: InstructionClock) -> None:
        self.clock = clock
        self.level = False
        self.changes: List[Tuple[int, bool]] = []

    def set_level(self, level: bool) -> None:
        if level != self.level:
            self.level = level
            self.changes.append((self.clock.now_ns(), level))

    def rising_edges(self) -> List[int]:
        return [t for t, level in self.changes if level]


class Board:
    def __init__(self) -> None:
        self.clock = InstructionClock()
        self.timers = TimerQueue()
        self.irq0 = EdgeRecorder(self.clock)
        self.pit = Pit(self.clock, self.timers, self.irq0)
        assert self.irq0.changes == [(0, True)]  # idle OUT is high from power-up
        self.irq0.changes.clear()
        self.bus = Bus("pio")
        self.pit.attach(self.bus)

    def out(self, port: int, value: int) -> None:
        self.bus.write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.bus.read(port, 1)

    def run_until(self, ns: int) -> None:
        """Advance virtual time in small steps, firing timers as a CPU loop would."""
        while self.clock.now < ns:
            step = min(ns, self.timers.earliest) - self.clock.now
            self.clock.advance_ns(max(step, 0))
            self.timers.run_expired(self.clock.now)

    def program(self, channel_port: int, control: int, count: int) -> None:
        self.out(CONTROL, control)
        self.out(channel_port, count & 0xFF)
        self.out(channel_port, count >> 8)

    def read_word(self, port: int) -> int:
        low = self.inb(port)
        return low | (self.inb(port) << 8)


@pytest.fixture
def board() -> Board:
    return Board()


def test_mode2_rate_generator_fires_irq0_every_period(board):
    board.program(CH0, 0x34, 1193)  # what hlt_timer.S and Linux's periodic PIT do
    board.run_until(10_500_000)
    edges = board.irq0.rising_edges()
    expected = [ticks_to_ns(1193 * k) for k in range(1, 11)]
    assert edges == expected
    assert expected[0] == 999_848  # 1193 / 1.193182 MHz


def test_mode2_output_goes_low_for_one_clock_per_period(board):
    board.program(CH0, 0x34, 100)
    board.run_until(ticks_to_ns(205))
    assert board.irq0.changes[0:4] == [(ticks_to_ns(99), False), (ticks_to_ns(100), True),
                                       (ticks_to_ns(199), False), (ticks_to_ns(200), True)]


def test_mode3_square_wave_half_high_half_low(board):
    board.program(CH0, 0x36, 11932)  # ~100 Hz
    board.run_until(ticks_to_ns(3 * 11932) + 1)
    falls = [t for t, level in board.irq0.changes if not level]
    assert falls == [ticks_to_ns(5966), ticks_to_ns(11932 + 5966), ticks_to_ns(2 * 11932 + 5966)]
    assert board.irq0.rising_edges() == [ticks_to_ns(11932), ticks_to_ns(2 * 11932), ticks_to_ns(3 * 11932)]


def test_mode0_oneshot_on_channel0(board):
    board.out(CONTROL, 0x30)
    assert board.irq0.level is False  # OUT goes low on the control word
    board.out(CH0, 0x00)
    board.out(CH0, 0x10)  # 4096 ticks
    board.run_until(10_000_000)
    assert board.irq0.rising_edges() == [ticks_to_ns(4096)]


def test_count_zero_means_65536(board):
    board.program(CH0, 0x30, 0)
    board.run_until(ticks_to_ns(65536) + 10)
    assert board.irq0.rising_edges() == [ticks_to_ns(65536)]


def test_channel2_mode0_gated_by_port61_with_output_bit(board):
    """pit_calibrate_tsc: gate on, speaker off, mode 0 on channel 2, poll bit 5."""
    board.out(PORT61, (board.inb(PORT61) & ~0x02) | 0x01)
    board.program(CH2, 0xB0, 59659)  # 50 ms latch
    assert not board.inb(PORT61) & 0x20
    board.clock.advance_ns(ticks_to_ns(59658))
    assert not board.inb(PORT61) & 0x20
    board.clock.advance_ns(ticks_to_ns(59659) - ticks_to_ns(59658))
    assert board.inb(PORT61) & 0x20
    assert board.inb(PORT61) & 0x01


def test_channel2_counting_pauses_while_the_gate_is_low(board):
    board.program(CH2, 0xB0, 1000)  # gate still low after reset: paused
    board.clock.advance_ns(ticks_to_ns(2000))
    assert not board.inb(PORT61) & 0x20
    board.out(PORT61, 0x01)
    board.clock.advance_ns(ticks_to_ns(999))
    assert not board.inb(PORT61) & 0x20
    board.clock.advance_ns(ticks_to_ns(1000) - ticks_to_ns(999))
    assert board.inb(PORT61) & 0x20


def test_quick_pit_calibrate_reads_the_msb_falling(board):
    """quick_pit_calibrate: count 0xffff in mode 0, read LSB then MSB without latching."""
    board.out(PORT61, 0x01)
    board.program(CH2, 0xB0, 0xFFFF)
    msbs = []
    for _ in range(4):
        board.inb(CH2)
        msbs.append(board.inb(CH2))
        board.clock.advance_ns(ticks_to_ns(256))
    assert msbs == [0xFF, 0xFE, 0xFD, 0xFC]


def test_refresh_bit_toggles_with_time(board):
    first = board.inb(PORT61) & 0x10
    board.clock.advance_ns(REFRESH_PERIOD_NS)
    assert board.inb(PORT61) & 0x10 != first
    board.clock.advance_ns(REFRESH_PERIOD_NS)
    assert board.inb(PORT61) & 0x10 == first


def test_port61_keeps_its_writable_bits(board):
    board.out(PORT61, 0xFF)
    assert board.inb(PORT61) & 0x0F == 0x0F
    assert board.inb(PORT61) & 0xC0 == 0


def test_counter_latch_freezes_the_value_until_read(board):
    board.program(CH0, 0x34, 10000)
    board.clock.advance_ns(ticks_to_ns(1234))
    board.out(CONTROL, 0x00)  # latch channel 0
    board.clock.advance_ns(ticks_to_ns(500))
    assert board.read_word(CH0) == 10000 - 1234
    assert board.read_word(CH0) == 10000 - 1734  # live again


def test_read_back_status_and_count(board):
    board.program(CH2, 0xB6, 1000)  # channel 2, word, mode 3, binary
    board.out(PORT61, 0x01)
    board.clock.advance_ns(ticks_to_ns(100))
    board.out(CONTROL, 0xC8)  # read-back: count and status of channel 2
    status = board.inb(CH2)
    assert status & 0x3F == 0x36  # access word, mode 3, binary
    assert status & 0x80  # OUT high in the first half of the square wave
    assert not status & 0x40  # count loaded
    assert board.read_word(CH2) == 1000 - 200  # mode 3 counts down by two


def test_read_back_status_before_a_count_shows_null_count(board):
    board.out(CONTROL, 0x30)
    board.out(CONTROL, 0xE2)  # read-back status only, channel 0
    status = board.inb(CH0)
    assert status & 0x40 and not status & 0x80


def test_lobyte_and_hibyte_only_access(board):
    board.out(CONTROL, 0x10)  # channel 0, LSB only, mode 0
    board.out(CH0, 0x80)
    board.clock.advance_ns(ticks_to_ns(0x10))
    assert board.inb(CH0) == 0x70
    board.out(CONTROL, 0x20)  # MSB only
    board.out(CH0, 0x02)  # count 0x200
    board.clock.advance_ns(ticks_to_ns(0x100))
    assert board.inb(CH0) == 0x01


def test_bcd_counting(board):
    board.out(CONTROL, 0x31)  # channel 0, word, mode 0, BCD
    board.out(CH0, 0x00)
    board.out(CH0, 0x10)  # BCD 1000
    board.clock.advance_ns(ticks_to_ns(1))
    assert board.read_word(CH0) == 0x0999
    board.run_until(ticks_to_ns(1000) + 1)
    assert board.irq0.rising_edges() == [ticks_to_ns(1000)]


def test_mode1_waits_for_a_gate_trigger(board):
    board.program(CH2, 0xB2, 500)  # channel 2, mode 1
    board.clock.advance_ns(ticks_to_ns(1000))
    assert board.inb(PORT61) & 0x20  # not triggered: OUT stays high
    board.out(PORT61, 0x01)  # rising gate: trigger
    assert not board.inb(PORT61) & 0x20
    board.clock.advance_ns(ticks_to_ns(500))
    assert board.inb(PORT61) & 0x20


def test_mode4_strobe_is_one_clock_low(board):
    board.program(CH0, 0x38, 300)
    board.run_until(ticks_to_ns(400))
    assert board.irq0.changes[-2:] == [(ticks_to_ns(300), False), (ticks_to_ns(301), True)]


def test_late_timers_still_produce_each_edge(board):
    """A timer polled late still produces the edge it was armed for."""
    board.program(CH0, 0x34, 1193)
    board.clock.advance_ns(1_500_000)  # half a period late
    board.timers.run_expired(board.clock.now)
    assert [level for _, level in board.irq0.changes] == [False, True, False][:len(board.irq0.changes)]
    assert len(board.irq0.rising_edges()) == 1
    assert board.timers.earliest == ticks_to_ns(2 * 1193 - 1)


def test_a_long_stall_coalesces_missed_periods(board):
    board.program(CH0, 0x34, 100)
    board.clock.advance_ns(10**9)  # ~11,900 periods missed
    fired = board.timers.run_expired(board.clock.now)
    assert fired < 10
    assert board.timers.earliest > board.clock.now
    assert board.irq0.level is True


def test_reprogramming_restarts_the_period(board):
    board.program(CH0, 0x34, 1000)
    board.clock.advance_ns(300_000)
    board.program(CH0, 0x34, 2000)
    start = board.clock.now
    board.run_until(start + ticks_to_ns(2000) + 1)
    assert board.irq0.rising_edges() == [start + ticks_to_ns(2000)]


def test_control_register_reads_as_ff(board):
    assert board.inb(CONTROL) == 0xFF
    assert PIT_HZ == 1_193_182


def test_linux_pit_calibrate_tsc_measures_the_documented_tsc_frequency(board):
    """arch/x86/kernel/tsc.c:pit_calibrate_tsc, with the clock synced at each I/O."""
    from pyhv.clock import TSC_HZ, Tsc

    tsc = Tsc(board.clock)
    latch, ms, loopmin = PIT_HZ // 20, 50, 5000
    board.out(PORT61, (board.inb(PORT61) & ~0x02) | 0x01)
    board.out(CONTROL, 0xB0)
    board.out(CH2, latch & 0xFF)
    board.out(CH2, latch >> 8)
    t1 = previous = tsc.read()
    t2 = t1
    loops, tsc_min, tsc_max = 0, None, 0
    while not board.inb(PORT61) & 0x20:
        board.clock.advance(4000)  # the loop body: 4 us of guest instructions
        t2 = tsc.read()
        delta, previous = t2 - previous, t2
        tsc_min = delta if tsc_min is None else min(tsc_min, delta)
        tsc_max = max(tsc_max, delta)
        loops += 1
    assert loops >= loopmin and tsc_max <= 10 * tsc_min
    khz = (t2 - t1) // ms
    assert khz == pytest.approx(TSC_HZ // 1000, rel=1e-4)

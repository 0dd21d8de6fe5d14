"""Virtual clocks, the timer queue and the TSC."""

from __future__ import annotations

import threading
from typing import List

import pytest
from hypothesis import given, strategies as st

from pyhv.clock import NEVER, ClockError, TSC_HZ, HostClock, InstructionClock, TimerQueue, Tsc


def test_instruction_clock_counts_instructions():
    clock = InstructionClock(ns_per_insn=3)
    clock.advance(10)
    assert clock.now_ns() == 30
    clock.advance_ns(5)
    assert clock.now == 35
    clock.warp_to(20)  # never backwards
    assert clock.now_ns() == 35
    clock.warp_to(100)
    assert clock.now_ns() == 100


def test_instruction_clock_rejects_bad_rates():
    with pytest.raises(ClockError, match="ns_per_insn must be a positive integer, got 0"):
        InstructionClock(ns_per_insn=0)
    with pytest.raises(ValueError, match="backwards"):
        InstructionClock().advance_ns(-1)


def test_instruction_clock_idle_warps_to_the_deadline_unless_woken():
    clock = InstructionClock()
    clock.idle(5000)
    assert clock.now_ns() == 5000
    wake = threading.Event()
    wake.set()
    clock.idle(9000, wake)
    assert clock.now_ns() == 5000


def test_host_clock_is_monotonic_and_idles_until_woken():
    clock = HostClock()
    first = clock.now_ns()
    wake = threading.Event()
    wake.set()
    clock.idle(first + 10 * 10**9, wake)  # returns at once: already woken
    second = clock.now_ns()
    assert 0 <= first <= second < 10 * 10**9


def test_timer_queue_fires_in_deadline_order_and_tracks_earliest():
    queue = TimerQueue()
    fired: List[str] = []
    assert queue.earliest == NEVER and queue.next_deadline() is None
    queue.schedule(300, lambda: fired.append("c"))
    queue.schedule(100, lambda: fired.append("a"))
    queue.schedule(200, lambda: fired.append("b1"))
    queue.schedule(200, lambda: fired.append("b2"))
    assert queue.earliest == 100
    assert queue.run_expired(99) == 0
    assert queue.run_expired(200) == 3
    assert fired == ["a", "b1", "b2"]
    assert queue.next_deadline() == 300
    queue.run_expired(10**6)
    assert fired[-1] == "c" and queue.earliest == NEVER


def test_timer_queue_cancel_moves_earliest():
    queue = TimerQueue()
    fired: List[int] = []
    first = queue.schedule(10, lambda: fired.append(10))
    queue.schedule(20, lambda: fired.append(20))
    queue.cancel(first)
    assert queue.earliest == 20
    queue.cancel(first)  # twice is harmless
    queue.cancel(None)
    queue.run_expired(50)
    assert fired == [20]
    assert len(queue) == 0


def test_a_callback_may_reschedule_and_fire_again_in_the_same_run():
    queue = TimerQueue()
    fired: List[int] = []

    def tick():
        fired.append(len(fired))
        if len(fired) < 3:
            queue.schedule(10 * len(fired), tick)

    queue.schedule(0, tick)
    queue.run_expired(15)
    assert fired == [0, 1]  # deadlines 0 and 10; the one at 20 waits
    assert queue.earliest == 20


@given(st.lists(st.tuples(st.integers(0, 1000), st.booleans()), max_size=40), st.integers(0, 1000))
def test_timer_queue_matches_a_sorted_model(entries, now):
    queue = TimerQueue()
    fired: List[int] = []
    live = []
    for i, (deadline, cancel) in enumerate(entries):
        handle = queue.schedule(deadline, lambda i=i: fired.append(i))
        if cancel:
            queue.cancel(handle)
        else:
            live.append((deadline, i))
    queue.run_expired(now)
    assert fired == [i for deadline, i in sorted(live) if deadline <= now]
    rest = [deadline for deadline, i in live if deadline > now]
    assert queue.next_deadline() == (min(rest) if rest else None)


def test_tsc_counts_at_its_frequency_and_can_be_written():
    clock = InstructionClock()
    tsc = Tsc(clock, hz=2_500_000_000)
    clock.advance_ns(1000)
    assert tsc.read() == 2500
    tsc.write(10**6)
    clock.advance_ns(400)
    assert tsc.read() == 10**6 + 1000
    assert tsc.deadline_to_ns(10**6 + 2500) == 2000  # 1500 ticks after t=1400 ns
    default = Tsc(clock)
    assert default.hz == TSC_HZ and default.read() == clock.now_ns() * TSC_HZ // 10**9
    with pytest.raises(ClockError, match="TSC frequency .* got 0"):
        Tsc(clock, hz=0)

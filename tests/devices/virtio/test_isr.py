"""InterruptStatus: the line follows the bits, whichever thread drives it last."""

from __future__ import annotations

import random
import threading
from typing import List, Optional

from pyhv.devices.virtio.isr import InterruptStatus
from pyhv.irq import CallbackIrqLine

USED, CONFIG = 1, 2
TIMEOUT = 10


class GatedLine:
    """A line whose next ``set_level(level)`` blocks until the test opens its gate, so the
    test can hold one thread inside the system call while another changes the bits."""

    def __init__(self) -> None:
        self.level = False
        self.history: List[bool] = []
        self.gate: Optional[threading.Event] = None
        self.entered = threading.Event()
        self._calls = threading.Lock()  # two callers at once would be the bug under test
        self.overlapped = False

    def set_level(self, level: bool) -> None:
        if not self._calls.acquire(False):
            self.overlapped = True
            self._calls.acquire()
        try:
            gate, self.gate = self.gate, None
            if gate is not None:
                self.entered.set()
                assert gate.wait(TIMEOUT), "the test never opened the gate"
            self.level = level
            self.history.append(level)
        finally:
            self._calls.release()


def _in_thread(fn, *args) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


def test_line_follows_bits_single_thread():
    line = GatedLine()
    status = InterruptStatus(line.set_level)
    status.raise_bits(USED)
    status.raise_bits(CONFIG)  # already high: no second system call
    assert line.history == [True] and status.bits == USED | CONFIG
    assert status.clear(USED) == USED | CONFIG and line.level  # CONFIG keeps it high
    assert status.take() == CONFIG and status.bits == 0
    assert line.history == [True, False]


def test_bits_without_the_line():
    line = GatedLine()
    status = InterruptStatus(line.set_level)
    status.raise_bits(CONFIG, drive_line=False)
    assert status.bits == CONFIG and line.history == []
    assert status.take() == CONFIG and line.history == []


def _overtake(line: GatedLine, slow, fast, what: str) -> List[bool]:
    """Hold ``slow()`` inside its set_level call while ``fast()`` runs on another thread;
    ``fast`` must return without waiting for that system call. Then let ``slow`` finish."""
    line.gate = gate = threading.Event()
    slow_thread = _in_thread(slow)
    assert line.entered.wait(TIMEOUT)
    fast_thread = _in_thread(fast)
    fast_thread.join(TIMEOUT)
    assert not fast_thread.is_alive(), what
    history = list(line.history)
    gate.set()
    slow_thread.join(TIMEOUT)
    assert not slow_thread.is_alive()
    return history


def test_ack_during_a_slow_raise_is_not_undone():
    """The I/O thread is inside set_level(True) when the vCPU acknowledges the last bit:
    the acknowledgement returns without waiting, and the line ends low."""
    line = GatedLine()
    status = InterruptStatus(line.set_level)
    during = _overtake(line, lambda: status.raise_bits(USED), lambda: status.clear(USED),
                       "the acknowledgement waited for the raise's system call")
    assert during == []  # the raise was still inside its system call
    assert line.history == [True, False] and not line.level and status.bits == 0
    assert not line.overlapped


def test_raise_during_a_slow_lowering_is_not_lost():
    """The vCPU is inside set_level(False) when new work completes: the line ends high."""
    line = GatedLine()
    status = InterruptStatus(line.set_level)
    status.raise_bits(USED)
    _overtake(line, lambda: status.clear(USED), lambda: status.raise_bits(USED),
              "the raise waited for the acknowledgement's system call")
    assert line.history == [True, False, True] and line.level and status.bits == USED
    assert not line.overlapped


def test_many_threads_leave_the_line_at_the_bits():
    """Raisers and an acknowledger race on a caching line (the KVM one caches its level);
    after each round the line must match the bits and no two calls may overlap."""
    for seed in range(20):
        rng = random.Random(seed)
        line = GatedLine()
        cached = CallbackIrqLine(5, lambda _gsi, level: line.set_level(level))
        status = InterruptStatus(cached.set_level)
        steps = [[rng.choice((USED, CONFIG)) for _ in range(200)] for _ in range(2)]

        def raise_all(causes):
            for cause in causes:
                status.raise_bits(cause)

        def ack_all():
            for _ in range(300):
                status.clear(rng.choice((USED, CONFIG, USED | CONFIG)))

        threads = [_in_thread(raise_all, causes) for causes in steps] + [_in_thread(ack_all)]
        for thread in threads:
            thread.join(TIMEOUT)
        assert line.level == bool(status.bits) == cached.level, f"seed {seed}"
        status.take()
        assert not line.level and not line.overlapped, f"seed {seed}"

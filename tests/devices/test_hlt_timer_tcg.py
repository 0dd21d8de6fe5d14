"""tests/guests/hlt_timer.S, unchanged, on the software CPU with pyhv's PIC, PIT and APICs.

This wires the devices the way the tcg accelerator is meant to (see the module docstring of
pyhv.devices.irq_router): an instruction clock, timers polled after each run slice, HLT
warping the clock to the next deadline. It checks the guest's output, its exit status and
that the ticks arrived at the PIT's virtual times.
"""

from __future__ import annotations

import shutil
from typing import List

import pytest

from pyhv.bus import Bus
from pyhv.clock import InstructionClock, TimerQueue
from pyhv.devices.irq_router import SoftIrqChip
from pyhv.devices.pit import ticks_to_ns
from pyhv.lifecycle import Lifecycle, Shutdown
from pyhv.memory import GuestMemory, MiB

pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                                reason="GNU as and ld (binutils) are needed to build the test guest")

COM1, UART_LCR, UART_LSR, LCR_DLAB, LSR_IDLE = 0x3F8, 3, 5, 0x80, 0x60
DEBUG_EXIT = 0xF4


class Uart:
    """Just enough of a 16550 for the guest's polled output."""

    def __init__(self) -> None:
        self.text: List[str] = []
        self.lcr = 0

    def read(self, offset: int, size: int) -> int:
        return LSR_IDLE if offset == UART_LSR else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == UART_LCR:
            self.lcr = value
        elif offset == 0 and not self.lcr & LCR_DLAB:  # with DLAB set it is the divisor
            self.text.append(chr(value & 0xFF))


class DebugExit:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def read(self, offset: int, size: int) -> int:
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        self.lifecycle.shutdown((value << 1) | 1, "isa-debug-exit")


class TickLog:
    """Wraps the CPU's acknowledge to log (virtual ns, vector) of every interrupt taken."""

    def __init__(self, clock: InstructionClock, acknowledge) -> None:
        self.clock = clock
        self._acknowledge = acknowledge
        self.taken: List[tuple] = []

    def __call__(self):
        vector = self._acknowledge()
        if vector is not None:
            self.taken.append((self.clock.now, vector))
        return vector


def test_hlt_timer_guest_runs_on_the_software_cpu(guest_path):
    from pyhv.accel.tcg import Cpu, StopReason
    from pyhv.boot.loader import load_kernel

    ticks = 20
    memory = GuestMemory(16 * MiB)
    pio, mmio = Bus("pio"), Bus("mmio")
    lifecycle = Lifecycle()
    clock = InstructionClock(ns_per_insn=1)
    timers = TimerQueue()
    chip = SoftIrqChip(clock, timers, pio, mmio)
    uart = Uart()
    pio.attach(COM1, 8, uart)
    pio.attach(DEBUG_EXIT, 1, DebugExit(lifecycle))

    state = load_kernel(memory, guest_path("hlt_timer"), None, f"ticks={ticks}")
    cpu = Cpu(memory, pio, mmio, lifecycle)
    cpu.load_state(state)
    log = TickLog(clock, chip.source.acknowledge)
    cpu.acknowledge_interrupt = log
    chip.source.on_raise = lambda: setattr(cpu, "interrupt_request", True)

    for _ in range(100_000):
        if lifecycle.pending is not None:
            break
        budget = max(1, min(timers.earliest - clock.now, 1_000_000))
        result = cpu.run(budget)
        clock.advance(result.instructions)
        if result.reason == StopReason.HLT:
            clock.idle(timers.earliest)
        timers.run_expired(clock.now)
        assert result.reason != StopReason.SHUTDOWN, result.detail

    output = "".join(uart.text)
    assert lifecycle.pending == Shutdown(0x21, "isa-debug-exit"), output
    assert output.splitlines() == [
        "pic: remapped to 0x20/0x28, imr=0xfe",
        f"pit: channel 0 at 1 kHz, waiting for {ticks} ticks",
        f"timer ticks: {ticks}",
        "pic: imr after the last tick=0xff",
    ]
    assert [vector for _, vector in log.taken] == [0x20] * ticks
    # Halted between ticks, the CPU takes each one at the PIT's rising edge.
    first = log.taken[0][0]
    period = ticks_to_ns(1193)
    for k, (at, _) in enumerate(log.taken):
        edge_ticks = 1193 * (k + 1)
        assert at - first == pytest.approx(ticks_to_ns(edge_ticks) - ticks_to_ns(1193), abs=2), k
    assert period == 999_848

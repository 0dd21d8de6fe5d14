"""Cost of virtual time on the software CPU's side: PIT ticks through the PIC, and the poll.

    python bench/irq_timer.py [ticks]      (run it under CPython and under PyPy)

"tick" is one 1 kHz PIT period delivered end to end without a CPU: the timer queue fires
the two OUT transitions, the PIC raises INTR, the CPU-side acknowledge takes vector 0x20
and the guest's EOI is written to port 0x20. "poll" is the check the CPU makes after each
block when no timer is due (one clock read and one int comparison).
"""

from __future__ import annotations

import sys
import time

from pyhv.bus import Bus
from pyhv.clock import InstructionClock, TimerQueue
from pyhv.devices.irq_router import SoftIrqChip


def build():
    clock = InstructionClock()
    timers = TimerQueue()
    pio, mmio = Bus("pio"), Bus("mmio")
    chip = SoftIrqChip(clock, timers, pio, mmio)
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE),
                        (0x43, 0x34), (0x40, 1193 & 0xFF), (0x40, 1193 >> 8)):
        pio.write(port, 1, value)
    return clock, timers, pio, chip


def ticks_per_second(ticks: int) -> float:
    clock, timers, pio, chip = build()
    source = chip.source
    start = time.perf_counter()
    for _ in range(ticks):
        while not source.pending:
            clock.warp_to(timers.earliest)
            timers.run_expired(clock.now)
        source.acknowledge()
        pio.write(0x20, 1, 0x20)
    return ticks / (time.perf_counter() - start)


def polls_per_second(polls: int) -> float:
    clock, timers, _, _ = build()
    earliest_due = 0
    start = time.perf_counter()
    for _ in range(polls):
        if clock.now_ns() >= timers.earliest:
            earliest_due += 1
    elapsed = time.perf_counter() - start
    assert earliest_due == 0
    return polls / elapsed


def main() -> None:
    ticks = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    print(f"{sys.implementation.name}: {ticks_per_second(ticks) / 1e3:.1f} k PIT ticks/s end to end, "
          f"{polls_per_second(ticks * 50) / 1e6:.1f} M timer polls/s")


if __name__ == "__main__":
    main()

"""The ACPI PM timer of a software-CPU machine counts the guest's virtual time."""

from __future__ import annotations

import struct
from pathlib import Path

from pyhv.clock import InstructionClock
from pyhv.devices.acpi_pm import PM_TIMER_HZ, PM_TIMER_MASK
from pyhv.machine import Machine
from pyhv.qemu_args import parse_run_args

PM_TMR_PORT = 0x608


def halting_multiboot_kernel(path: Path) -> Path:
    magic, flags, load = 0x1BADB002, 1 << 16, 0x100000
    header = struct.pack("<12I", magic, flags, -(magic + flags) & 0xFFFFFFFF, load, load, 0, 0, load + 48,
                         0, 0, 0, 0)
    path.write_bytes(header + b"\xfa\xf4")  # cli; hlt
    return path


def test_pm_timer_follows_the_instruction_clock(tmp_path: Path) -> None:
    kernel = halting_multiboot_kernel(tmp_path / "hlt.mb")
    machine = Machine(parse_run_args(["-accel", "tcg", "-m", "16", "-nographic", "-kernel", str(kernel)]),
                      notice=lambda message: None)
    try:
        clock = machine.accel.clock
        assert isinstance(clock, InstructionClock)
        before = machine.pio.read(PM_TMR_PORT, 4)
        clock.advance_ns(1_000_000_000)  # one virtual second, no host time to speak of
        after = machine.pio.read(PM_TMR_PORT, 4)
    finally:
        machine.close()
    ticks = (after - before) & PM_TIMER_MASK
    assert abs(ticks - PM_TIMER_HZ) <= 1

"""The software CPU's clocks: host time, and instruction-count time (QEMU's -icount), which
makes a run deterministic and keeps timer ticks from being lost on a slow CPU."""

import pytest

from pyhv.lifecycle import Shutdown
from pyhv.machine import Machine
from pyhv.qemu_args import parse_run_args

TIMER_LINES = ["pic: remapped to 0x20/0x28, imr=0xfe", "pit: channel 0 at 1 kHz, waiting for 100 ticks",
               "timer ticks: 100", "pic: imr after the last tick=0xff"]


def run_hlt_timer(guest_path, tmp_path, icount: str):
    log = tmp_path / f"serial-{icount}.txt"
    argv = ["-accel", "tcg", "-m", "16", "-no-reboot", "-serial", f"file:{log}",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(guest_path("hlt_timer")),
            "-icount", icount]
    machine = Machine(parse_run_args(argv))
    try:
        stop = machine.run()
        retired = machine.accel.instructions
        virtual_ns = machine.accel.clock.now_ns()
    finally:
        machine.close()
    return stop, log.read_text().splitlines(), retired, virtual_ns


@pytest.mark.parametrize("icount", ["shift=0,sleep=off", "shift=0,sleep=on", "shift=4,sleep=off", "off"])
def test_timer_guest_on_every_clock(guest_path, tmp_path, icount):
    stop, lines, _, _ = run_hlt_timer(guest_path, tmp_path, icount)
    assert stop == Shutdown(33, stop.reason)
    assert lines == TIMER_LINES


def test_instruction_clock_is_deterministic(guest_path, tmp_path):
    first = run_hlt_timer(guest_path, tmp_path, "shift=0,sleep=off")
    second = run_hlt_timer(guest_path, tmp_path, "shift=0,sleep=off")
    assert first[2] == second[2]  # the same instructions retired
    assert first[3] == second[3]  # at the same virtual time
    assert first[3] >= 99_000_000  # 100 ticks of the PIT at 1193182/1193 Hz: about 99.99 ms of virtual time

"""The mips guest: its checksums follow the loops it claims to run, and its per-iteration
instruction counts (which bench/tcg_vm.py turns into MIPS) are exact.

The software CPU runs the guest in-process, so its instruction counter can be read; the
counts are checked as the difference between two runs, which cancels everything but the
loops (the printed checksums have a fixed width, so printing costs the same every time).
QEMU's TCG runs it too, as the independent check of the checksums.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyhv.lifecycle import Shutdown
from pyhv.machine import Machine
from pyhv.qemu_args import parse_run_args

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))
import tcg_vm  # noqa: E402  (bench/ is not a package)

DEBUG_EXIT_DEVICE = "isa-debug-exit,iobase=0xf4,iosize=4"
GUEST_EXIT_OK_STATUS = 33
QEMU_BINARY = "qemu-system-x86_64"
QEMU_TIMEOUT_S = 120


def run_on_software_cpu(kernel: Path, iters: int, serial: Path):
    """Boots the guest under -accel tcg in this process: (exit status, instructions, output)."""
    config = parse_run_args([
        "-accel", "tcg", "-m", "64", "-no-reboot", "-serial", f"file:{serial}",
        "-device", DEBUG_EXIT_DEVICE, "-kernel", str(kernel), "-append", f"iters={iters}",
    ])
    machine = Machine(config)
    try:
        stop = machine.run()
        instructions = machine.accel.cpu.instructions_retired
    finally:
        machine.close()
    assert isinstance(stop, Shutdown), stop
    return stop.status, instructions, serial.read_bytes()


@pytest.mark.parametrize("iters", [0, 1, 257, 1000])
def test_checksums_follow_the_python_model_of_both_loops(guest_path, tmp_path, iters):
    status, _insns, output = run_on_software_cpu(guest_path("mips"), iters, tmp_path / "serial.txt")
    assert status == GUEST_EXIT_OK_STATUS, output
    lines = output.decode().splitlines()
    assert lines[:3] == ["mips: start", "mips: tight loop done", "mips: kernel loop done"]
    assert tcg_vm.parse_checksums(output) == (tcg_vm.tight_loop_checksum(iters), tcg_vm.kernel_loop_checksum(iters))


def test_each_iteration_costs_the_instructions_the_benchmark_counts(guest_path, tmp_path):
    kernel = guest_path("mips")
    # Both counts have three digits: the guest's command-line parser costs 8 instructions a digit.
    _, few, _ = run_on_software_cpu(kernel, 100, tmp_path / "few.txt")
    _, more, _ = run_on_software_cpu(kernel, 400, tmp_path / "more.txt")
    assert more - few == 300 * (tcg_vm.TIGHT_LOOP_INSNS + tcg_vm.KERNEL_LOOP_INSNS)


def test_the_zero_iteration_run_skips_both_loops(guest_path, tmp_path):
    # iters=0 is the benchmark's baseline: it must cost only the fixed code around the loops.
    kernel = guest_path("mips")
    _, none, _ = run_on_software_cpu(kernel, 0, tmp_path / "none.txt")
    _, one, _ = run_on_software_cpu(kernel, 1, tmp_path / "one.txt")
    per_iteration = tcg_vm.TIGHT_LOOP_INSNS + tcg_vm.KERNEL_LOOP_INSNS
    assert 0 < one - none <= per_iteration + 4


@pytest.mark.skipif(shutil.which(QEMU_BINARY) is None, reason=f"{QEMU_BINARY} not installed")
def test_qemu_tcg_computes_the_same_checksums(guest_path):
    iters = 5000
    done = subprocess.run(
        [QEMU_BINARY, "-M", "microvm", "-accel", "tcg", "-m", "64", "-nographic", "-nodefaults",
         "-serial", "stdio", "-no-reboot", "-device", DEBUG_EXIT_DEVICE,
         "-kernel", str(guest_path("mips")), "-append", f"iters={iters}"],
        capture_output=True, timeout=QEMU_TIMEOUT_S,
    )
    assert done.returncode == GUEST_EXIT_OK_STATUS, done.stderr
    assert tcg_vm.parse_checksums(done.stdout, "qemu") == (
        tcg_vm.tight_loop_checksum(iters), tcg_vm.kernel_loop_checksum(iters))

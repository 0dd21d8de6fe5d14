"""Exit latency: microseconds per port-I/O exit and per MMIO exit, pyhv against QEMU.

Boots the pio_mmio test guest (tests/guests/pio_mmio.S) under `pyhv run -accel kvm` on
each configured interpreter, and under `qemu-system-x86_64 -accel kvm` (-M pc, and
-M microvm). The guest prints a line before its `out` loop, after it, and after its MMIO
write loop; the loops are timed by when those lines arrive on the VMM's stdout, so the
VMM's start-up (SeaBIOS alone costs QEMU -M pc 3 to 10 s here) drops out. Each VMM runs
with N exits of each kind and with none (which prices the lines themselves, subtracted);
the best of the rounds is kept.

    .venv/bin/python bench/exit_latency.py                 # CPython + PyPy + QEMU
    .venv/bin/python bench/exit_latency.py --exits 50000 --rounds 1 --no-qemu
    .venv/bin/python bench/exit_latency.py --interpreter pypy=/usr/bin/pypy3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

from _vmtiming import (
    QEMU_BINARY, BenchError, Vmm, add_vmm_arguments, chosen_interpreters, load_guest_builder, pyhv_guest_vmm,
    qemu_guest_vmm, ratio_text, watch_run,
)

GUEST_EXIT_OK_STATUS = 33


class Result(NamedTuple):
    label: str
    startup_s: float
    pio_us: float
    mmio_us: float


def pyhv_vmm(python: Path, kernel: Path) -> Vmm:
    return pyhv_guest_vmm(python, kernel, "kvm")


def qemu_vmm(machine: str, kernel: Path) -> Vmm:
    return qemu_guest_vmm(machine, kernel, "kvm")


def timed_run(vmm: Vmm, exits: int, timeout_s: float) -> Dict[str, float]:
    """Runs the guest with `exits` of each kind; returns when each serial mark arrived.

    Times are seconds from the VMM's start to the end of the line "exit loops: start",
    then of "pio writes: N" and "mmio writes: N", each sent as soon as its loop ends.
    """
    append = f"pio={exits} mmio={exits} reads=0"
    wanted = {
        "start": b"exit loops: start",
        "pio": b"pio writes: %d" % exits,
        "mmio": b"mmio writes: %d" % exits,
    }
    run = watch_run(vmm.argv_prefix + ["-append", append], wanted, timeout_s, env=vmm.env)
    if run.timed_out:
        raise BenchError(f"{vmm.label}: {append!r} still running after {timeout_s} s")
    if run.status != GUEST_EXIT_OK_STATUS or len(run.marks) != len(wanted):
        raise BenchError(
            f"{vmm.label}: {append!r} ended with status {run.status} (want {GUEST_EXIT_OK_STATUS}), "
            f"marks seen: {sorted(run.marks)}\nstdout: {run.output.decode('utf-8', errors='replace').strip()!r}\n"
            f"stderr: {run.errors[-2000:]}"
        )
    return run.marks


def measure(vmm: Vmm, exits: int, rounds: int, timeout_s: float) -> Result:
    """Best-of-rounds loop times with `exits` and with none; their difference is the exits' cost."""
    best: Dict[str, float] = {}

    def keep_best(key: str, seconds: float) -> None:
        best[key] = min(seconds, best.get(key, seconds))

    for _ in range(rounds):
        for count in (0, exits):
            marks = timed_run(vmm, count, timeout_s)
            keep_best(f"startup{count}", marks["start"])
            keep_best(f"pio{count}", marks["pio"] - marks["start"])
            keep_best(f"mmio{count}", marks["mmio"] - marks["pio"])
    per_exit_us = 1e6 / exits
    return Result(
        vmm.label,
        best["startup0"],
        (best[f"pio{exits}"] - best["pio0"]) * per_exit_us,
        (best[f"mmio{exits}"] - best["mmio0"]) * per_exit_us,
    )


def format_table(results: Sequence[Result], reference: Optional[Result], exits: int, rounds: int) -> str:
    ref_name = reference.label if reference else "no QEMU run"
    lines = [
        f"exit latency: {exits} exits per kind, best of {rounds}, start-up subtracted; ratios against {ref_name}",
        f"{'VMM':<36} {'to guest s':>10} {'us/PIO':>8} {'us/MMIO':>8} {'PIO ratio':>10} {'MMIO ratio':>10}",
    ]
    for result in results:
        lines.append(
            f"{result.label:<36} {result.startup_s:>10.2f} {result.pio_us:>8.2f} {result.mmio_us:>8.2f} "
            f"{ratio_text(result.pio_us, reference.pio_us if reference else None, 2):>10} "
            f"{ratio_text(result.mmio_us, reference.mmio_us if reference else None, 2):>10}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exits", type=int, default=200_000, help="exits per measured run (default 200000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best time of each run is kept")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed to one VM run")
    add_vmm_arguments(parser)
    args = parser.parse_args(argv)
    if args.exits <= 0 or args.rounds <= 0:
        parser.error("--exits and --rounds must be positive")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    kernel = load_guest_builder().build_guest("pio_mmio")
    vmms: List[Vmm] = []
    problems: List[str] = []
    if not args.no_qemu:
        if shutil.which(QEMU_BINARY) is None:
            problems.append(f"{QEMU_BINARY} not found: QEMU skipped")
        else:
            vmms.append(qemu_vmm("pc", kernel))
            if not args.no_microvm:
                vmms.append(qemu_vmm("microvm", kernel))
    if not args.no_pyhv:
        for python in chosen_interpreters(args):
            try:
                vmms.append(pyhv_vmm(python, kernel))
            except BenchError as err:
                problems.append(f"skipped: {err}")

    results: List[Result] = []
    for vmm in vmms:
        print(f"measuring {vmm.label} ...", file=sys.stderr, flush=True)
        try:
            results.append(measure(vmm, args.exits, args.rounds, args.timeout))
        except BenchError as err:
            problems.append(f"failed: {err}")
    reference = next((r for r in results if r.label.startswith("qemu kvm -M pc")), None)
    print(format_table(results, reference, args.exits, args.rounds))
    for problem in problems:
        print(problem)
    if args.json:
        args.json.write_text(json.dumps(
            {"exits": args.exits, "rounds": args.rounds, "results": [r._asdict() for r in results],
             "problems": problems},
            indent=2,
        ))
    return 0 if results and not any(p.startswith("failed") for p in problems) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

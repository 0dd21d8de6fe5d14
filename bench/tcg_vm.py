"""Guest MIPS of the software CPU in a whole VM: pyhv -accel tcg against QEMU's TCG.

Boots the mips test guest (tests/guests/mips.S) under `pyhv run -accel tcg` on each
configured interpreter, and under `qemu-system-x86_64 -accel tcg` (-M pc, and -M microvm).
The guest runs two loops of N iterations each (a 5-instruction register loop and a
23-instruction kernel-like loop with loads, stores, call/ret and data-dependent branches)
and prints a fixed line before the first loop and after each. Each loop is timed by when
those lines arrive on the VMM's stdout, minus the same gap in an iters=0 run (the lines'
own cost); MIPS = N * instructions per iteration / that time, best of the rounds. The
checksums the guest prints at the end must agree between all VMMs (and with this file's
Python model of the loops, for small N).

    .venv/bin/python bench/tcg_vm.py                              # CPython + PyPy + QEMU
    .venv/bin/python bench/tcg_vm.py --iters 400000000 --rounds 5 --json out.json
    .venv/bin/python bench/tcg_vm.py --no-qemu --interpreter .venv-pypy/bin/python
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from _vmtiming import (
    QEMU_BINARY, BenchError, Vmm, add_vmm_arguments, chosen_interpreters, load_guest_builder, pyhv_guest_vmm,
    qemu_guest_vmm, ratio_text, watch_run,
)

GUEST_EXIT_OK_STATUS = 33
TIGHT_LOOP_INSNS = 5
KERNEL_LOOP_INSNS = 23
LOOPS = ("tight", "kernel")
MARKS = {
    "start": b"mips: start",
    "tight": b"mips: tight loop done",
    "kernel": b"mips: kernel loop done",
}
CHECKSUM_LINE = re.compile(rb"mips: checksums tight 0x([0-9a-f]{16}) kernel 0x([0-9a-f]{16})")
# Constants of mips.S's loops, for the Python model.
TABLE_ENTRIES = 256
TABLE_SEED = 0x27D4EB2F
MIX_MULTIPLIER = 0x5BD1E995
KERNEL_CHECKSUM_SEED = 0x165667B1
MASK64 = (1 << 64) - 1
# The model runs at about 1 M iterations/s; above this the VMMs are only checked against each other.
MODEL_MAX_ITERS = 3_000_000


class Result(NamedTuple):
    label: str
    iters: int
    tight_mips: float
    kernel_mips: float
    tight_checksum: int
    kernel_checksum: int


def tight_loop_checksum(iters: int) -> int:
    """RDX after mips.S's 5-instruction loop: rax += rcx; rdx ^= rax, for rcx = 0..iters-1."""
    total = folded = 0
    for counter in range(iters):
        total = (total + counter) & MASK64
        folded ^= total
    return folded


def kernel_loop_checksum(iters: int) -> int:
    """R8 ^ R10 after mips.S's kernel-like loop, computed the way the guest does."""
    table = [(index * TABLE_SEED) & MASK64 for index in range(TABLE_ENTRIES)]
    checksum, counter_r10, threshold = KERNEL_CHECKSUM_SEED, 0, 1 << 63
    for counter in range(iters):
        index = counter & (TABLE_ENTRIES - 1)
        value = (table[index] + checksum) & MASK64
        value = (value * MIX_MULTIPLIER) & MASK64
        value = ((value << 13) | (value >> 51)) & MASK64
        value ^= counter
        table[index] = value
        if value & 1:
            checksum = (checksum + value) & MASK64
        else:
            checksum = ~(checksum - value) & MASK64
        if value < threshold:
            counter_r10 = (counter_r10 - 1 + value) & MASK64
        else:
            counter_r10 = (counter_r10 + 1) & MASK64
    return checksum ^ counter_r10


def parse_checksums(output: bytes, label: str = "guest") -> Tuple[int, int]:
    """The (tight, kernel) checksums from the guest's last line, or BenchError naming what came out."""
    found = CHECKSUM_LINE.search(output)
    if found is None:
        tail = output.decode("utf-8", errors="replace").strip()[-300:]
        raise BenchError(f"{label}: no 'mips: checksums tight 0x... kernel 0x...' line in its output: {tail!r}")
    return int(found.group(1), 16), int(found.group(2), 16)


def pyhv_vmm(python: Path, kernel: Path) -> Vmm:
    return pyhv_guest_vmm(python, kernel, "tcg")


def qemu_vmm(machine: str, kernel: Path) -> Vmm:
    return qemu_guest_vmm(machine, kernel, "tcg")


def timed_run(vmm: Vmm, iters: int, timeout_s: float) -> Tuple[Dict[str, float], Tuple[int, int]]:
    """One run with `iters`: (seconds each loop took between its lines, the checksums)."""
    append = f"iters={iters}"
    run = watch_run(vmm.argv_prefix + ["-append", append], MARKS, timeout_s, env=vmm.env)
    if run.timed_out:
        raise BenchError(f"{vmm.label}: {append!r} still running after {timeout_s} s "
                         f"(last line {run.last_line()!r})")
    if run.status != GUEST_EXIT_OK_STATUS or len(run.marks) != len(MARKS):
        raise BenchError(
            f"{vmm.label}: {append!r} ended with status {run.status} (want {GUEST_EXIT_OK_STATUS}), "
            f"marks seen: {sorted(run.marks)}\nstdout: {run.output.decode('utf-8', errors='replace').strip()!r}\n"
            f"stderr: {run.errors[-2000:]}"
        )
    gaps = {"tight": run.marks["tight"] - run.marks["start"], "kernel": run.marks["kernel"] - run.marks["tight"]}
    return gaps, parse_checksums(run.output, vmm.label)


def mips_from_times(iters: int, loaded_s: float, empty_s: float, insns_per_iter: int) -> float:
    """Guest MIPS of a loop: its instructions over the loop time less the iters=0 time."""
    work_s = loaded_s - empty_s
    if work_s <= 0:
        raise BenchError(f"{iters} iterations took no measurable time over an empty run "
                         f"({loaded_s:.4f} s vs {empty_s:.4f} s): raise --iters")
    return iters * insns_per_iter / work_s / 1e6


def measure(vmm: Vmm, iters: int, rounds: int, timeout_s: float) -> Result:
    """Best-of-rounds loop times with `iters` and with none; checksums must repeat across rounds."""
    best: Dict[Tuple[str, int], float] = {}
    checksums: Optional[Tuple[int, int]] = None
    for _ in range(rounds):
        for count in (0, iters):
            gaps, sums = timed_run(vmm, count, timeout_s)
            for loop in LOOPS:
                key = (loop, count)
                best[key] = min(gaps[loop], best.get(key, gaps[loop]))
            if count == iters:
                if checksums is not None and sums != checksums:
                    raise BenchError(f"{vmm.label}: checksums changed between rounds: {checksums} then {sums}")
                checksums = sums
    return Result(
        vmm.label, iters,
        mips_from_times(iters, best[("tight", iters)], best[("tight", 0)], TIGHT_LOOP_INSNS),
        mips_from_times(iters, best[("kernel", iters)], best[("kernel", 0)], KERNEL_LOOP_INSNS),
        checksums[0], checksums[1],
    )


def checksum_problems(results: Sequence[Result], model_max_iters: int = MODEL_MAX_ITERS) -> List[str]:
    """Disagreements between VMMs that ran the same iterations, and with the model when it is cheap."""
    problems: List[str] = []
    by_iters: Dict[int, List[Result]] = {}
    for result in results:
        by_iters.setdefault(result.iters, []).append(result)
    for iters, group in sorted(by_iters.items()):
        reference = (group[0].label, group[0].tight_checksum, group[0].kernel_checksum)
        if iters <= model_max_iters:
            reference = ("the Python model", tight_loop_checksum(iters), kernel_loop_checksum(iters))
        for result in group:
            if (result.tight_checksum, result.kernel_checksum) != reference[1:]:
                problems.append(
                    f"checksum mismatch at iters={iters}: {result.label} has tight {result.tight_checksum:#018x} "
                    f"kernel {result.kernel_checksum:#018x}, {reference[0]} {reference[1]:#018x} {reference[2]:#018x}"
                )
    return problems


def format_table(results: Sequence[Result], reference: Optional[Result], rounds: int) -> str:
    ref_name = reference.label if reference else "no QEMU run"
    lines = [
        f"guest MIPS, tight loop {TIGHT_LOOP_INSNS} and kernel-like loop {KERNEL_LOOP_INSNS} instructions/iteration, "
        f"best of {rounds}, iters=0 run subtracted; ratios against {ref_name}",
        f"{'VMM':<30} {'iters':>10} {'tight MIPS':>11} {'kernel MIPS':>12} {'tight ratio':>12} {'kernel ratio':>13}",
    ]
    for result in results:
        lines.append(
            f"{result.label:<30} {result.iters:>10} {result.tight_mips:>11.2f} {result.kernel_mips:>12.2f} "
            f"{ratio_text(result.tight_mips, reference.tight_mips if reference else None, 4):>12} "
            f"{ratio_text(result.kernel_mips, reference.kernel_mips if reference else None, 4):>13}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=200_000_000,
                        help="iterations of each loop under QEMU (default 200000000)")
    parser.add_argument("--pypy-iters", type=int, default=3_000_000,
                        help="iterations under pyhv on PyPy (default 3000000)")
    parser.add_argument("--cpython-iters", type=int, default=100_000,
                        help="iterations under pyhv on CPython (default 100000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best time of each loop is kept")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to one VM run")
    add_vmm_arguments(parser, "; PyPy ones get --pypy-iters")
    args = parser.parse_args(argv)
    if min(args.iters, args.pypy_iters, args.cpython_iters) <= 0 or args.rounds <= 0:
        parser.error("--iters, --pypy-iters, --cpython-iters and --rounds must be positive")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    kernel = load_guest_builder().build_guest("mips")
    plan: List[Tuple[Vmm, int]] = []
    problems: List[str] = []
    if not args.no_qemu:
        if shutil.which(QEMU_BINARY) is None:
            problems.append(f"{QEMU_BINARY} not found: QEMU skipped")
        else:
            plan.append((qemu_vmm("pc", kernel), args.iters))
            if not args.no_microvm:
                plan.append((qemu_vmm("microvm", kernel), args.iters))
    if not args.no_pyhv:
        for python in chosen_interpreters(args):
            try:
                vmm = pyhv_vmm(python, kernel)
            except BenchError as err:
                problems.append(f"skipped: {err}")
                continue
            plan.append((vmm, args.pypy_iters if "PyPy" in vmm.label else args.cpython_iters))

    results: List[Result] = []
    for vmm, iters in plan:
        print(f"measuring {vmm.label}, iters={iters} ...", file=sys.stderr, flush=True)
        try:
            results.append(measure(vmm, iters, args.rounds, args.timeout))
        except BenchError as err:
            problems.append(f"failed: {err}")
    problems += [f"failed: {p}" for p in checksum_problems(results)]
    reference = next((r for r in results if r.label == "qemu tcg -M pc"), None)
    print(format_table(results, reference, args.rounds))
    for problem in problems:
        print(problem)
    if args.json:
        args.json.write_text(json.dumps(
            {"rounds": args.rounds, "tight_loop_insns": TIGHT_LOOP_INSNS, "kernel_loop_insns": KERNEL_LOOP_INSNS,
             "results": [r._asdict() for r in results], "problems": problems},
            indent=2,
        ))
    return 0 if results and not any(p.startswith("failed") for p in problems) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Two variants of pyhv's software CPU, whole Debian boots side by side: is a change faster?

    python bench/ab_boot.py [--rounds 4] [--million 2000] [--python PATH] [--no-pin]
                            [--a-env K=V ...] [--b-env K=V ...] [--a-tree DIR] [--b-tree DIR]

A variant is a source tree (``--a-tree``/``--b-tree``: another checkout, e.g. from
``git worktree add``; default this one) with environment settings on top (``--a-env`` and
``--b-env``, repeatable: ``PYHV_PYPY_JIT=...``, ``PYHV_TCG_TRANSLATE_AFTER=...``). Each round
starts both variants' ``bench/tcg_kernel.py --no-block-profile`` at the same moment, each pinned
to a CPU of its own (``taskset``; the two swap CPUs every round, so that a CPU busier with the
rest of the machine burdens both alike; ``--no-pin`` leaves placement to the scheduler), and
prints the CPU seconds of each. At the end: the difference of every pair (A - B), their mean and
median, and how many pairs each variant won. Use an even number of rounds.

Why pairs: a whole boot on PyPy swings by 10-20% from one minute to the next on these shared
machines (33.4 to 42.4 s of CPU for the same code in one hour), more than most changes to the
software CPU move it. Two boots run side by side swing together, though not in step: the same
code against itself gave differences of -2.4 to +1.5 s a pair (pinned, 2026-11-27, AMD EPYC),
and once -7.3 s unpinned. A change worth less than about 2 s needs many pairs to show.

The variants must run the same guest work: ``tcg_kernel.py`` boots with a fixed RNG seed and
virtual time from the instruction count, so two runs of one tree retire instructions within
0.02% of each other. A pair whose counts differ by more than ``INSTRUCTION_TOLERANCE`` is
flagged: the change altered what the guest does, not only how fast it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from _vmtiming import DEFAULT_INTERPRETERS, REPO_ROOT, BenchError, host_summary
from pyhv.runtime_env import usable_cpu_ids

# tcg_kernel.py's result line: "pypy: 423,635,229 instructions (...), wall 33.53 s, cpu 33.37 s, ..."
RESULT_LINE = re.compile(r"^(?:pypy|cpython): ([\d,]+) instructions .*?, cpu ([\d.]+) s,", re.MULTILINE)
# Relative difference of the instructions retired above which a pair ran different guest work.
INSTRUCTION_TOLERANCE = 0.001


class Variant(NamedTuple):
    label: str  # "A" or "B"
    tree: Path
    env: Dict[str, str]


class BootResult(NamedTuple):
    instructions: int
    cpu_s: float


class Pair(NamedTuple):
    a: BootResult
    b: BootResult

    @property
    def difference_s(self) -> float:
        return self.a.cpu_s - self.b.cpu_s

    @property
    def same_work(self) -> bool:
        larger = max(self.a.instructions, self.b.instructions, 1)
        return abs(self.a.instructions - self.b.instructions) / larger <= INSTRUCTION_TOLERANCE


def parse_env(settings: Sequence[str], option: str) -> Dict[str, str]:
    """``K=V`` strings as a dict; BenchError names the option and the bad setting."""
    env: Dict[str, str] = {}
    for setting in settings:
        name, eq, value = setting.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise BenchError(f"{option} {setting!r}: expected NAME=VALUE")
        env[name] = value
    return env


def parse_result(output: str, label: str) -> BootResult:
    """The instructions retired and CPU seconds ``tcg_kernel.py`` printed."""
    found = RESULT_LINE.search(output)
    if found is None:
        last = output.strip().splitlines()[-3:] or ["(no output)"]
        raise BenchError(f"variant {label}: no result line from tcg_kernel.py; it ended with: "
                         + " | ".join(last))
    return BootResult(int(found.group(1).replace(",", "")), float(found.group(2)))


def summary(pairs: Sequence[Pair]) -> List[str]:
    """The report's closing lines: every difference, their mean and median, the wins."""
    if not pairs:
        return ["no pairs ran"]
    differences = [pair.difference_s for pair in pairs]
    a_wins = sum(1 for d in differences if d < 0)
    b_wins = sum(1 for d in differences if d > 0)
    lines = [
        "A - B, CPU s: " + ", ".join(f"{d:+.2f}" for d in differences),
        f"mean {statistics.mean(differences):+.2f} s, median {statistics.median(differences):+.2f} s; "
        f"A faster in {a_wins} of {len(pairs)} pairs, B in {b_wins}",
    ]
    different = [k + 1 for k, pair in enumerate(pairs) if not pair.same_work]
    if different:
        lines.append(f"round(s) {', '.join(map(str, different))}: the variants retired instructions more than "
                     f"{INSTRUCTION_TOLERANCE:.1%} apart: the change alters the guest's work, not only its speed")
    return lines


def cpu_plan(rounds: int, cpus: Sequence[int]) -> List[Tuple[Optional[int], Optional[int]]]:
    """The CPU of each variant in each round: the first two of ``cpus``, swapped every round;
    no pinning (None) with fewer than two."""
    if len(cpus) < 2:
        return [(None, None)] * rounds
    first, second = sorted(cpus)[:2]
    return [(first, second) if k % 2 == 0 else (second, first) for k in range(rounds)]


def _command(python: Path, million: float, cpu: Optional[int]) -> List[str]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return pin + [str(python), "bench/tcg_kernel.py", "--million", f"{million:g}", "--no-block-profile"]


def run_round(python: Path, million: float, variants: Sequence[Variant],
              cpus: Sequence[Optional[int]] = (None, None)) -> Pair:
    """Both variants' boots at once (each on ``cpus[i]`` where given); their results once both
    ended."""
    processes = []
    for variant, cpu in zip(variants, cpus):
        env = dict(os.environ, **variant.env)
        env["PYTHONPATH"] = str(variant.tree)
        processes.append(subprocess.Popen(_command(python, million, cpu), cwd=variant.tree, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate()[0] for process in processes]
    results = []
    for variant, process, output in zip(variants, processes, outputs):
        if process.returncode != 0:
            last = " | ".join(output.strip().splitlines()[-3:]) or "(no output)"
            raise BenchError(f"variant {variant.label} exited with status {process.returncode}: {last}")
        results.append(parse_result(output, variant.label))
    return Pair(*results)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="pairs of boots (default 4)")
    parser.add_argument("--million", type=float, default=2000.0,
                        help="stop each boot after this many million instructions (default: the whole boot)")
    parser.add_argument("--python", type=Path, default=DEFAULT_INTERPRETERS["pypy"],
                        help="the interpreter both variants run on (default: the PyPy venv)")
    parser.add_argument("--a-tree", type=Path, default=REPO_ROOT, help="variant A's source tree")
    parser.add_argument("--b-tree", type=Path, default=REPO_ROOT, help="variant B's source tree")
    parser.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the variants to CPUs")
    args = parser.parse_args(argv)
    try:
        variants = [Variant("A", args.a_tree.resolve(), parse_env(args.a_env, "--a-env")),
                    Variant("B", args.b_tree.resolve(), parse_env(args.b_env, "--b-env"))]
        if args.rounds < 1:
            raise BenchError(f"--rounds {args.rounds}: at least one pair")
        for variant in variants:
            if not (variant.tree / "bench" / "tcg_kernel.py").is_file():
                raise BenchError(f"variant {variant.label}: {variant.tree} has no bench/tcg_kernel.py")
        if not args.python.exists():
            raise BenchError(f"--python {args.python}: not found (scripts/setup.sh makes the venvs)")
        # Absolute, for the variants run in their own trees; not resolved, which would take a
        # venv's interpreter out of its venv.
        args.python = Path(os.path.abspath(args.python))
        print(host_summary())
        for variant in variants:
            settings = " ".join(f"{k}={v}" for k, v in variant.env.items()) or "no settings"
            print(f"{variant.label}: {variant.tree}, {settings}")
        pin = not args.no_pin and shutil.which("taskset") is not None
        plan = cpu_plan(args.rounds, usable_cpu_ids() if pin else [])
        pairs = []
        for k, cpus in enumerate(plan):
            pair = run_round(args.python, args.million, variants, cpus)
            pairs.append(pair)
            where = f" (CPUs {cpus[0]} and {cpus[1]})" if cpus[0] is not None else ""
            print(f"round {k + 1}{where}: A {pair.a.cpu_s:.2f} s ({pair.a.instructions:,} instructions), "
                  f"B {pair.b.cpu_s:.2f} s ({pair.b.instructions:,})", flush=True)
    except BenchError as err:
        print(f"ab_boot: {err}", file=sys.stderr)
        return 1
    print("\n".join(summary(pairs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

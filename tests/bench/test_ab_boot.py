"""bench/ab_boot: reading tcg_kernel.py's result, the variants' settings, and the summary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))
import ab_boot  # noqa: E402  (bench/ is not a package)
from _vmtiming import BenchError  # noqa: E402

TCG_KERNEL_OUTPUT = """\
pypy: 423,635,229 instructions (Shutdown(status=1, reason='isa-debug-exit: guest wrote 0x0 (1 bytes)')), \
wall 33.53 s, cpu 33.37 s, 12.70 MIPS (cpu time)
blocks translated: 1,051 in 1.69 s (1.61 ms each); blocks decoded: 45,008; translate after 6400 runs
"""


def test_parse_result_reads_instructions_and_cpu_seconds():
    assert ab_boot.parse_result(TCG_KERNEL_OUTPUT, "A") == ab_boot.BootResult(423_635_229, 33.37)
    cpython = "cpython: 1,000 instructions (budget), wall 2.00 s, cpu 1.50 s, 0.00 MIPS (cpu time)\n"
    assert ab_boot.parse_result(cpython, "B") == ab_boot.BootResult(1000, 1.5)


def test_parse_result_names_the_variant_and_how_its_output_ended():
    with pytest.raises(BenchError, match=r"variant B: no result line .*Traceback \| ValueError: bad"):
        ab_boot.parse_result("starting\nTraceback\nValueError: bad\n", "B")
    with pytest.raises(BenchError, match=r"variant A: .*\(no output\)"):
        ab_boot.parse_result("", "A")


def test_parse_env_takes_name_value_pairs_and_refuses_the_rest():
    assert ab_boot.parse_env(["PYHV_PYPY_JIT=trace_limit=3000", "X="], "--a-env") == {
        "PYHV_PYPY_JIT": "trace_limit=3000", "X": ""}
    for bad in ("NOVALUE", "=1", "1X=2", "A B=1"):
        with pytest.raises(BenchError, match=r"--b-env .*expected NAME=VALUE"):
            ab_boot.parse_env([bad], "--b-env")


def _pair(a_s: float, b_s: float, a_insns: int = 1_000_000, b_insns: int = 1_000_000) -> "ab_boot.Pair":
    return ab_boot.Pair(ab_boot.BootResult(a_insns, a_s), ab_boot.BootResult(b_insns, b_s))


def test_summary_reports_differences_mean_median_and_wins():
    lines = ab_boot.summary([_pair(33.0, 34.0), _pair(35.5, 35.0), _pair(30.0, 33.0)])
    assert lines[0] == "A - B, CPU s: -1.00, +0.50, -3.00"
    assert lines[1] == "mean -1.17 s, median -1.00 s; A faster in 2 of 3 pairs, B in 1"
    assert len(lines) == 2  # the same work in every pair: no warning


def test_summary_flags_pairs_whose_guest_work_differs():
    same = _pair(1.0, 1.0, 1_000_000, 1_000_900)  # 0.09% apart: within the tolerance
    different = _pair(1.0, 1.0, 1_000_000, 1_016_000)
    lines = ab_boot.summary([same, different])
    assert "A faster in 0 of 2 pairs, B in 0" in lines[1]
    assert lines[2].startswith("round(s) 2: the variants retired instructions more than 0.1% apart")
    assert ab_boot.summary([]) == ["no pairs ran"]


def test_main_refuses_a_tree_without_the_benchmark(tmp_path, capsys):
    assert ab_boot.main(["--a-tree", str(tmp_path), "--rounds", "1"]) == 1
    assert f"variant A: {tmp_path.resolve()} has no bench/tcg_kernel.py" in capsys.readouterr().err
    assert ab_boot.main(["--rounds", "0"]) == 1
    assert "--rounds 0: at least one pair" in capsys.readouterr().err


def test_cpu_plan_swaps_the_two_cpus_every_round():
    assert ab_boot.cpu_plan(4, [3, 1, 2]) == [(1, 2), (2, 1), (1, 2), (2, 1)]
    assert ab_boot.cpu_plan(2, [0]) == [(None, None), (None, None)]
    assert ab_boot.cpu_plan(1, []) == [(None, None)]


def test_main_runs_a_relative_python_inside_each_variants_tree(tmp_path, monkeypatch, capsys):
    # Each variant runs in its own tree, so a --python relative to the caller's directory
    # must be made absolute first, and not resolved (a venv's python is a link into it).
    for name in ("a", "b"):
        (tmp_path / name / "bench").mkdir(parents=True)
        (tmp_path / name / "bench" / "tcg_kernel.py").write_text(
            f"print({TCG_KERNEL_OUTPUT.splitlines()[0]!r})\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.chdir(tmp_path)
    assert ab_boot.main(["--python", "bin/python", "--a-tree", "a", "--b-tree", "b",
                         "--rounds", "1", "--no-pin"]) == 0
    assert "A - B, CPU s: +0.00" in capsys.readouterr().out

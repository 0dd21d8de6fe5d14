"""bench/_vmtiming: marks are timed from whole lines, and a VMM that overruns is stopped, not waited on.

A stand-in "VMM" (this interpreter running a short script) prints lines the way a serial
console does, so the tests need no VM.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))
import _vmtiming  # noqa: E402  (bench/ is not a package)


def fake_vmm(script: str):
    return [sys.executable, "-c", script]


def test_marks_are_seen_in_order_with_crlf_and_a_prefix_on_the_line():
    script = (
        "import sys, time\n"
        "sys.stdout.write('SeaBIOS banner...loop: start\\r\\n'); sys.stdout.flush(); time.sleep(0.05)\n"
        "sys.stdout.write('loop: do'); sys.stdout.flush(); time.sleep(0.05)\n"
        "sys.stdout.write('ne\\nbye\\n'); sys.exit(7)\n"
    )
    run = _vmtiming.watch_run(fake_vmm(script), {"start": b"loop: start", "done": b"loop: done"}, 60)
    assert not run.timed_out and run.status == 7
    assert set(run.marks) == {"start", "done"}
    # "loop: done" was complete only after its second half arrived, 50 ms after the first.
    assert 0 < run.marks["start"] < run.marks["done"] <= run.elapsed_s
    assert run.last_line() == "bye"


def test_whole_line_marks_ignore_a_line_that_only_ends_with_the_mark():
    # The kernel's "Command line: ... -- echo MARKER" must not count as the marker itself.
    script = "print('Kernel command line: quiet -- echo MARKER'); print('MARKER')"
    run = _vmtiming.watch_run(fake_vmm(script), {"marker": b"MARKER"}, 60, whole_line=True)
    assert "marker" in run.marks
    early = _vmtiming.watch_run(fake_vmm("print('Kernel command line: -- echo MARKER')"),
                                {"marker": b"MARKER"}, 60, whole_line=True)
    assert early.marks == {}
    assert early.last_line() == "Kernel command line: -- echo MARKER"


def test_a_vmm_past_its_timeout_is_stopped_with_sigterm_and_reports_its_last_line():
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (sys.stderr.write('stopped by SIGTERM'), sys.exit(3)))\n"
        "print('booting', flush=True)\n"
        "time.sleep(60)\n"
    )
    run = _vmtiming.watch_run(fake_vmm(script), {"marker": b"never"}, 1.5)
    assert run.timed_out and run.status is None
    assert run.marks == {}
    assert run.last_line() == "booting"
    assert "stopped by SIGTERM" in run.errors


def test_a_missing_program_is_a_bench_error_naming_it(tmp_path):
    missing = str(tmp_path / "no-such-vmm")
    with pytest.raises(_vmtiming.BenchError, match="no-such-vmm"):
        _vmtiming.watch_run([missing], {}, 5)


@pytest.mark.parametrize("line, whole, expected", [
    (b"mark", True, True), (b"mark\r", True, True), (b"x mark", True, False),
    (b"x mark", False, True), (b"mark x", False, False), (b"", False, False),
])
def test_line_matches(line, whole, expected):
    assert _vmtiming.line_matches(line, b"mark", whole) is expected


def test_best_of_keeps_the_smallest_and_refuses_no_rounds():
    assert _vmtiming.best_of([3.0, 1.5, 2.0]) == 1.5
    with pytest.raises(_vmtiming.BenchError, match="no rounds"):
        _vmtiming.best_of([])


def test_the_host_summary_names_the_cpu_model_the_cpus_and_the_load(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9R14\n")
    summary = _vmtiming.host_summary(str(cpuinfo))
    model, cpus, load = summary.split(", ")
    assert model == "AMD EPYC 9R14"
    assert cpus.endswith(" CPUs") and int(cpus.split()[0]) >= 1
    assert load.startswith("load ") and len(load.split()) == 4


def test_the_host_summary_without_a_cpu_model_says_so(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t:\n")
    assert _vmtiming.host_summary(str(cpuinfo)).startswith("unknown CPU, ")
    assert _vmtiming.host_summary(str(tmp_path / "absent")).startswith("unknown CPU, ")

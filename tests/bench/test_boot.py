"""bench/boot: time-to-marker bookkeeping, the report of a boot that never got there, the
-icount and pyhv instruction counts, and the wrapper that runs `pyhv run` and counts.

Stand-in VMMs (this interpreter running a short script) play the boot, so most tests need
no kernel; the wrapper tests boot a small test guest on the software CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))
import boot  # noqa: E402  (bench/ is not a package)
from _vmtiming import BenchError, Vmm, watch_run  # noqa: E402

FILES = boot.BootFiles(Path("/boot/vmlinuz"), Path("/boot/initrd"), "console=ttyS0 quiet")


def fake_vmm(label: str, script: str) -> Vmm:
    return Vmm(label, [sys.executable, "-c", script])


def test_the_guest_command_follows_the_default_command_line():
    assert boot.append_for(FILES, boot.GUEST_COMMAND) == "console=ttyS0 quiet -- echo PYHV-BOOT-MARKER"
    extra = boot.with_extra_arguments(FILES, "loglevel=7")
    assert boot.append_for(extra, "true") == "console=ttyS0 quiet loglevel=7 -- true"
    assert boot.with_extra_arguments(FILES, " ") == FILES


def test_qemu_command_lines():
    plain = boot.qemu_vmm("pc", FILES)
    assert plain.label == "qemu tcg -M pc" and "-icount" not in plain.argv_prefix
    counted = boot.qemu_vmm("pc", FILES, icount=True)
    at = counted.argv_prefix.index("-icount")
    assert counted.argv_prefix[at + 1] == "shift=0"
    assert counted.argv_prefix[:5] == ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg"]
    assert counted.argv_prefix[at + 2:] == plain.argv_prefix[5:]


def test_pyhv_boots_cold_unless_given_a_hints_directory():
    cold = boot.pyhv_vmm(Path(sys.executable), FILES)
    assert cold.env["PYHV_TCG_HINTS"] == "off"
    warm = boot.pyhv_vmm(Path(sys.executable), FILES, "/tmp/hints", ", warm (hints)")
    assert warm.env["PYHV_TCG_HINTS"] == "/tmp/hints" and warm.label.endswith(", warm (hints)")
    assert warm.argv_prefix == cold.argv_prefix


def test_a_boot_to_the_marker_keeps_the_best_round_and_ignores_the_echoed_command_line():
    script = ("print('Kernel command line: quiet -- echo PYHV-BOOT-MARKER'); print('PYHV-BOOT-MARKER\\r');"
              "print('pyhv-guest: exit status 0'); raise SystemExit(1)")
    result = boot.measure(fake_vmm("fake", script), FILES, 2, 60)
    assert result.reached and result.status == 1 and result.rounds == 2
    assert 0 < result.marker_s <= result.elapsed_s
    assert result.last_line == "pyhv-guest: exit status 0"


def test_a_boot_that_times_out_reports_its_last_console_line():
    script = "import time; print('Booting the kernel...'); print('Run /init as init process', flush=True); time.sleep(60)"
    result = boot.measure(fake_vmm("slow", script), FILES, 3, 1.5)
    assert not result.reached and result.status is None
    line = boot.describe(result, None, 1.5)
    assert "did not reach the marker: stopped at the 2 s timeout" in line
    assert "last console line: 'Run /init as init process'" in line


def test_a_silent_boot_says_there_was_no_output():
    result = boot.measure(fake_vmm("mute", "raise SystemExit(5)"), FILES, 1, 30)
    assert not result.reached and result.status == 5
    assert "exited with status 5" in boot.describe(result, None, 30)
    assert "no console output" in boot.describe(result, None, 30)


def test_the_marker_followed_by_a_failure_status_is_an_error():
    script = "print('PYHV-BOOT-MARKER'); raise SystemExit(3)"
    with pytest.raises(BenchError, match="fake: printed the marker but exited with status 3"):
        boot.measure(fake_vmm("fake", script), FILES, 1, 30)


def test_instruction_counts_are_read_from_pyhv_stderr_and_qemu_uptime():
    assert boot.instructions_reported("pyhv: bye\npyhv-bench: instructions retired 12345\n") == 12345
    assert boot.instructions_reported("nothing here") is None
    # /proc/uptime "0.81 0.06" under -icount shift=0: 0.75 s of virtual ns spent running.
    assert boot.icount_instructions(b"init ready\r\n0.81 0.06\r\nPYHV-BOOT-MARKER\r\n") == 750_000_000
    assert boot.icount_instructions(b"PYHV-BOOT-MARKER\r\n") is None


def test_report_lines_give_the_ratio_against_qemu_pc():
    qemu = boot.BootResult("qemu tcg -M pc", 2.0, 1, 2.5, "", None, 3)
    pyhv = boot.BootResult("pyhv tcg, PyPy 3.9.16", 30.0, 1, 31.0, "", 3_100_000_000, 1)
    line = boot.describe(pyhv, qemu, 300)
    assert "30.00 s to the marker, 15.0x qemu tcg -M pc" in line
    assert "3.100 billion instructions retired in all (100.0 MIPS)" in line
    icount = boot.BootResult("qemu tcg -M pc -icount", 9.0, 1, 9.5, "", 750_000_000, 1)
    assert "x qemu" not in boot.describe(icount, qemu, 300)
    assert "0.75 billion instructions from the kernel's clock start" in boot.describe(icount, qemu, 300)


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "must be positive"),
    (["--pyhv-timeout", "0"], "must be positive"),
    (["--extra-append", "a -- b"], "must not contain"),
])
def test_bad_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        boot.parse_args(argv)
    assert message in capsys.readouterr().err


def _wrapper_argv(kernel: Path, append: str):
    return [sys.executable, "-c", boot.PYHV_WRAPPER, "-accel", "tcg", "-m", "64", "-nographic", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(kernel), "-append", append]


def test_the_pyhv_wrapper_runs_pyhv_run_and_reports_the_instructions(guest_path):
    kernel = guest_path("mips")
    counts = []
    for iters in (100, 300):  # as many digits: the guest's command-line parser costs the same
        run = watch_run(_wrapper_argv(kernel, f"iters={iters}"), {"done": b"mips: kernel loop done"}, 120)
        assert run.status == 33 and "done" in run.marks, run.errors
        counts.append(boot.instructions_reported(run.errors))
    assert counts[1] - counts[0] == 200 * (5 + 23)


def test_the_pyhv_wrapper_reports_the_instructions_when_stopped_at_the_timeout(guest_path):
    run = watch_run(_wrapper_argv(guest_path("mips"), "iters=4000000000"), {"done": b"mips: kernel loop done"}, 5)
    assert run.timed_out and run.marks == {}
    assert run.last_line() == "mips: start"
    assert boot.instructions_reported(run.errors) > 0, run.errors

"""Shared by the whole-VM benchmarks: run a VMM, note when marked serial lines arrive.

A VMM's start-up (SeaBIOS under QEMU -M pc costs 3 to 10 s here, interpreter start-up under
pyhv) is noise around the work a benchmark wants to time, so the guests print a line before
and after each piece of work and the benchmarks time the gaps between those lines, as read
from the VMM's stdout (its serial port). This module runs one VMM process and records, for
each wanted line, the time since the process started at which the line was complete.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

from pyhv.runtime_env import usable_cpus, vm_env

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INTERPRETERS = {
    "cpython": REPO_ROOT / ".venv" / "bin" / "python",
    "pypy": REPO_ROOT / ".venv-pypy" / "bin" / "python",
}
QEMU_BINARY = "qemu-system-x86_64"
DEBUG_EXIT_DEVICE = "isa-debug-exit,iobase=0xf4,iosize=4"
# A stopped VMM gets this long to exit on SIGTERM (pyhv prints what it knows) before SIGKILL.
TERMINATE_GRACE_S = 10.0


def host_summary(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The machine a benchmark ran on, for its report: the CPU model, the CPUs this process may
    use and the load average. Figures from different machines differ by 2-3x here (an AMD EPYC
    against an Intel one), so a report says which it came from."""
    model = "unknown CPU"
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                    break
    except OSError:
        pass
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{model}, {usable_cpus()} CPUs, load {load}"


class BenchError(Exception):
    """A VMM could not run the benchmark guest as expected."""


class Vmm(NamedTuple):
    label: str
    argv_prefix: List[str]  # everything but -append
    env: Optional[Dict[str, str]] = None  # None: this process's environment


class WatchedRun(NamedTuple):
    """What one VMM run showed: the marks seen, and how it ended."""

    marks: Dict[str, float]  # mark name -> seconds from the start to the end of its line
    status: Optional[int]  # exit status; None if it had to be killed
    timed_out: bool
    output: bytes  # everything the VMM wrote to stdout
    errors: str  # its stderr, decoded
    elapsed_s: float

    def last_line(self) -> str:
        """The last non-empty line of stdout (what the console showed when it stopped)."""
        for line in reversed(self.output.decode("utf-8", errors="replace").splitlines()):
            line = line.strip("\r")
            if line.strip():
                return line
        return ""


def add_vmm_arguments(parser: argparse.ArgumentParser, interpreter_note: str = "") -> None:
    """The options every whole-VM benchmark shares: which VMMs run (--cpython, --pypy,
    --interpreter, --no-pyhv, --no-qemu, --no-microvm) and --json. ``interpreter_note`` ends
    the help of --interpreter (what else that benchmark does per interpreter)."""
    parser.add_argument("--cpython", type=Path, default=DEFAULT_INTERPRETERS["cpython"], help="CPython to run pyhv")
    parser.add_argument("--pypy", type=Path, default=DEFAULT_INTERPRETERS["pypy"], help="PyPy to run pyhv")
    parser.add_argument(
        "--interpreter", action="append", default=[], metavar="PATH",
        help=f"run pyhv on these interpreters instead of --cpython/--pypy (repeatable{interpreter_note})",
    )
    parser.add_argument("--no-pyhv", action="store_true", help="measure QEMU only")
    parser.add_argument("--no-qemu", action="store_true", help="measure pyhv only")
    parser.add_argument("--no-microvm", action="store_true", help="skip QEMU -M microvm")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")


def chosen_interpreters(args: argparse.Namespace) -> List[Path]:
    """The interpreters to run pyhv on, from the options :func:`add_vmm_arguments` added."""
    return [Path(p) for p in args.interpreter] or [args.cpython, args.pypy]


def ratio_text(value: float, reference: Optional[float], digits: int) -> str:
    """``value / reference`` for a table cell; "-" without a usable reference (no QEMU run)."""
    if reference is None or reference <= 0:
        return "-"
    return f"{value / reference:.{digits}f}"


def load_guest_builder():
    """tests/guests/build.py as a module (it is a script, not part of the pyhv package)."""
    spec = importlib.util.spec_from_file_location("pyhv_bench_guest_build", REPO_ROOT / "tests" / "guests" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pyhv_guest_vmm(python: Path, kernel: Path, accel: str) -> Vmm:
    """pyhv running a multiboot test guest on ``accel``, console on stdout."""
    argv = [
        str(python), "-m", "pyhv", "run", "-accel", accel, "-m", "64", "-nographic", "-no-reboot",
        "-device", DEBUG_EXIT_DEVICE, "-kernel", str(kernel),
    ]
    return Vmm(f"pyhv {accel}, {interpreter_label(python)}", argv, vm_env())


def qemu_guest_vmm(machine: str, kernel: Path, accel: str) -> Vmm:
    """QEMU running the same guest with the same devices, as its peer."""
    argv = [
        QEMU_BINARY, "-M", machine, "-accel", accel, "-m", "64", "-nographic", "-nodefaults",
        "-serial", "stdio", "-no-reboot", "-device", DEBUG_EXIT_DEVICE, "-kernel", str(kernel),
    ]
    return Vmm(f"qemu {accel} -M {machine}", argv)


def interpreter_label(python: Path) -> str:
    """The label of the interpreter at `python`, such as "CPython 3.11.2" or "PyPy 3.9.16"."""
    probe = "import platform; print(platform.python_implementation(), platform.python_version())"
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    except OSError as err:
        raise BenchError(f"interpreter {python}: {err}") from err
    if done.returncode != 0:
        raise BenchError(f"interpreter {python} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def line_matches(line: bytes, mark: bytes, whole_line: bool) -> bool:
    """Whether a complete output line (without its newline) is `mark`.

    A serial console may end lines with CR LF; the CR is ignored. Without `whole_line` the
    mark only has to end the line, because SeaBIOS's output precedes the guest's on the same
    line under QEMU -M pc.
    """
    line = line.rstrip(b"\r")
    return line == mark if whole_line else line.endswith(mark)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM first, so that the VMM can report on its way out; SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def watch_run(argv: Sequence[str], marks: Mapping[str, bytes], timeout_s: float,
              whole_line: bool = False, env: Optional[Mapping[str, str]] = None) -> WatchedRun:
    """Runs `argv` to its end or for `timeout_s`, noting when each marked line completes.

    Never raises for what the VMM does (a timeout, a failure status): the caller decides
    what is an error. The process is stopped on timeout. stdout is read as it arrives, and
    each chunk is timestamped when read, so a mark's time is when its newline reached us.
    """
    seen: Dict[str, float] = {}
    output = bytearray()
    scanned = 0  # output[:scanned] holds only complete lines already matched
    timed_out = False
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        try:
            process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=stderr, env=None if env is None else dict(env))
        except OSError as err:
            raise BenchError(f"cannot start {argv[0]}: {err}") from err
        deadline = started + timeout_s
        with process.stdout:
            fd = process.stdout.fileno()
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([fd], [], [], remaining)
                if not ready:
                    continue
                chunk = os.read(fd, 65536)
                arrived = time.perf_counter() - started
                if not chunk:
                    break
                output += chunk
                end = output.rfind(b"\n")
                if end < scanned:
                    continue
                for line in bytes(output[scanned:end]).split(b"\n"):
                    for name, mark in marks.items():
                        if name not in seen and line_matches(line, mark, whole_line):
                            seen[name] = arrived
                scanned = end + 1
            if timed_out:
                _stop(process)
            else:
                try:
                    process.wait(timeout=max(deadline - time.perf_counter(), 1))
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _stop(process)
        elapsed = time.perf_counter() - started
        stderr.seek(0)
        errors = stderr.read().decode("utf-8", errors="replace").strip()
    status = process.returncode if not timed_out else None
    return WatchedRun(seen, status, timed_out, bytes(output), errors, elapsed)


def best_of(values: Sequence[float]) -> float:
    """The smallest of the rounds' times: noise on a shared machine only ever adds time."""
    if not values:
        raise BenchError("no rounds measured")
    return min(values)

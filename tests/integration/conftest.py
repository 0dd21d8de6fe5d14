"""Fixtures that build the test guests and boot them under pyhv or QEMU, as subprocesses.

Every run has a timeout, so a guest that hangs fails its test instead of hanging CI, and
its partial output is kept for the failure message.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence

import pytest

GUESTS_DIR = Path(__file__).resolve().parent.parent / "guests"
QEMU_BINARY = "qemu-system-x86_64"
DEBUG_EXIT_DEVICE = "isa-debug-exit,iobase=0xf4,iosize=4"
GUEST_RAM_MIB = "64"
# SeaBIOS writes a banner on the serial port before any -kernel runs; the guest starts after it.
SEABIOS_LAST_WORDS = "Booting from ROM.."


def _load_guest_builder():
    spec = importlib.util.spec_from_file_location("pyhv_test_guest_build", GUESTS_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


guest_builder = _load_guest_builder()


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def qemu_usable() -> bool:
    return shutil.which(QEMU_BINARY) is not None


class GuestRun(NamedTuple):
    """What one VM run left behind: serial output (stdout), stderr and the exit status."""

    argv: List[str]
    stdout: str
    stderr: str
    status: int

    def describe(self) -> str:
        return (
            f"command: {' '.join(self.argv)}\nexit status: {self.status}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def _decode(data: Optional[bytes]) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def run_vm(argv: Sequence[str], timeout_s: float) -> GuestRun:
    """Runs a VM to its end; a run past ``timeout_s`` is killed and fails the calling test."""
    argv = list(argv)
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as err:
        partial = GuestRun(argv, _decode(err.stdout), _decode(err.stderr), -1)
        pytest.fail(f"VM still running after {timeout_s} s, killed\n{partial.describe()}")
    return GuestRun(argv, _decode(done.stdout), _decode(done.stderr), done.returncode)


def pyhv_argv(kernel: Path, accel: str, append: Optional[str], python: str = sys.executable) -> List[str]:
    argv = [
        python, "-m", "pyhv", "run", "-accel", accel, "-m", GUEST_RAM_MIB, "-nographic", "-no-reboot",
        "-device", DEBUG_EXIT_DEVICE, "-kernel", str(kernel),
    ]
    if append is not None:
        argv += ["-append", append]
    return argv


def qemu_argv(kernel: Path, accel: str, append: Optional[str], machine: Optional[str] = None) -> List[str]:
    argv = [
        QEMU_BINARY, "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot", "-m", GUEST_RAM_MIB,
        "-device", DEBUG_EXIT_DEVICE, "-accel", accel, "-kernel", str(kernel),
    ]
    if machine is not None:
        argv += ["-M", machine]
    if append is not None:
        argv += ["-append", append]
    return argv


def strip_firmware_banner(serial_output: str) -> str:
    """QEMU's serial output from the guest's first byte on (SeaBIOS talks first on -M pc)."""
    head, found, guest_output = serial_output.partition(SEABIOS_LAST_WORDS)
    if not found:
        return head
    # SeaBIOS prints one more dot and a line break after those words. They usually have not
    # reached the serial port when the kernel starts, but once in a few hundred runs the dot
    # has (seen 2026-11-27, "exceptions" under TCG); no test guest prints a "." first.
    guest_output = guest_output[1:] if guest_output.startswith(".") else guest_output
    for line_break in ("\r\n", "\n"):
        if guest_output.startswith(line_break):
            return guest_output[len(line_break):]
    return guest_output


@pytest.fixture(scope="session")
def guest_kernel() -> Callable[[str], Path]:
    """build(name) -> the ELF kernel of tests/guests/NAME.S, built once per session."""
    built = {}

    def build(name: str) -> Path:
        if name not in built:
            built[name] = guest_builder.build_guest(name)
        return built[name]

    return build


@pytest.fixture(scope="session")
def run_pyhv() -> Callable[..., GuestRun]:
    """run(kernel, accel, append=None, timeout_s=60, python=sys.executable) under `pyhv run`."""

    def run(kernel: Path, accel: str, append: Optional[str] = None, timeout_s: float = 60,
            python: str = sys.executable) -> GuestRun:
        if accel == "kvm" and not kvm_usable():
            pytest.skip("needs /dev/kvm (absent or not readable and writable)")
        return run_vm(pyhv_argv(kernel, accel, append, python), timeout_s)

    return run


@pytest.fixture(scope="session")
def run_qemu() -> Callable[..., GuestRun]:
    """run(kernel, accel="tcg", append=None, timeout_s=60) under QEMU, firmware banner removed."""

    def run(kernel: Path, accel: str = "tcg", append: Optional[str] = None, timeout_s: float = 60) -> GuestRun:
        if not qemu_usable():
            pytest.skip(f"needs {QEMU_BINARY} as the peer (not on PATH)")
        if accel == "kvm" and not kvm_usable():
            pytest.skip("needs /dev/kvm (absent or not readable and writable)")
        raw = run_vm(qemu_argv(kernel, accel, append), timeout_s)
        return raw._replace(stdout=strip_firmware_banner(raw.stdout))

    return run

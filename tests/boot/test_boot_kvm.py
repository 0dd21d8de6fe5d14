"""Loader output run on a real CPU through /dev/kvm: a multiboot test guest (compared with
QEMU's own -kernel), and the Debian kernel reading the command line and initrd we pass."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Optional

import pytest

from pyhv.accel.base import Platform
from pyhv.bus import Bus
from pyhv.errors import PyhvError
from pyhv.kvm.system import kvm_available
from pyhv.lifecycle import Lifecycle
from pyhv.memory import GuestMemory

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(kvm_available() is not None, reason=f"KVM unusable: {kvm_available()}"),
]

GUESTS_DIR = Path(__file__).resolve().parents[1] / "guests"
MiB = 1 << 20
COM1 = 0x3F8
DEBUG_EXIT_PORT = 0xF4
UART_LSR = 5
LSR_TX_IDLE = 0x60  # THR empty and transmitter empty: a driver may always write
UART_LCR = 3
LCR_DLAB = 0x80


class CapturingUart:
    """Just enough of a 16550 for polled output: records bytes written to THR."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.lcr = 0

    def read(self, offset: int, size: int) -> int:
        return {UART_LSR: LSR_TX_IDLE, UART_LCR: self.lcr}.get(offset, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == UART_LCR:
            self.lcr = value
        elif offset == 0 and not self.lcr & LCR_DLAB:
            self.output.append(value & 0xFF)


class DebugExit:
    """QEMU's isa-debug-exit: writing V ends the VM with status (V << 1) | 1."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.lifecycle.shutdown((value << 1) | 1, "debug-exit")


def run_under_kvm(kernel: Path, initrd: Optional[Path], cmdline: str, ram: int,
                  seconds: float, until: Optional[bytes] = None) -> CapturingUart:
    from pyhv.accel.kvm import KvmAccelerator
    from pyhv.boot import load_kernel

    memory = GuestMemory(ram)
    pio, lifecycle, uart = Bus("pio"), Lifecycle(), CapturingUart()
    pio.attach(COM1, 8, uart)
    pio.attach(DEBUG_EXIT_PORT, 4, DebugExit(lifecycle))
    accel = KvmAccelerator(Platform(memory=memory, pio=pio, mmio=Bus("mmio"), lifecycle=lifecycle, cpu_model=None))
    accel.load_boot_state(load_kernel(memory, kernel, initrd, cmdline))
    done = threading.Event()

    def watchdog() -> None:
        waited = 0.0
        while not done.wait(0.2) and waited < seconds:
            waited += 0.2
            if until is not None and until in uart.output:
                break
        lifecycle.shutdown(0, "test watchdog")

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        accel.run()
    finally:
        done.set()
        thread.join()
        accel.close()
    return uart


def build_test_guest(name: str) -> Path:
    spec = importlib.util.spec_from_file_location("pyhv_boot_tests_guest_builder", GUESTS_DIR / "build.py")
    if spec is None or not (GUESTS_DIR / "build.py").is_file():
        pytest.skip("tests/guests/build.py is not there")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    try:
        return module.build_guest(name)
    except PyhvError as err:
        pytest.skip(f"cannot build test guest {name}: {err}")
    raise AssertionError("unreachable")


def test_multiboot_guest_sees_our_cmdline(tmp_path: Path) -> None:
    kernel = build_test_guest("hello")
    uart = run_under_kvm(kernel, None, "exit=16", 64 * MiB, seconds=30)
    text = uart.output.decode(errors="replace")
    assert "hello from the pyhv test guest" in text
    assert f"cmdline: {kernel} exit=16" in text


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")
def test_multiboot_guest_output_matches_qemu() -> None:
    kernel = build_test_guest("hello")
    ours = run_under_kvm(kernel, None, "exit=16 a b", 64 * MiB, seconds=30).output
    qemu = subprocess.run(
        ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "64", "-nographic", "-no-reboot",
         "-serial", "stdio", "-monitor", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
         "-kernel", str(kernel), "-append", "exit=16 a b"],
        capture_output=True, timeout=120,
    )
    assert qemu.returncode == 33, qemu.stderr.decode(errors="replace")
    theirs = qemu.stdout.replace(b"\r\n", b"\n")
    assert b"cmdline:" in ours
    # SeaBIOS may print before the guest; compare from the guest's first line on.
    start = theirs.find(b"hello from the pyhv test guest")
    assert start >= 0, theirs
    assert ours.replace(b"\r\n", b"\n") == theirs[start:]


@pytest.mark.slow
def test_debian_kernel_reads_our_cmdline_and_initrd(debian_kernel: Path, tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\0" * 100_000)
    uart = run_under_kvm(debian_kernel, initrd, "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1",
                         256 * MiB, seconds=240, until=b"RAMDISK:")
    text = uart.output.decode(errors="replace")
    assert "Command line: console=ttyS0 earlyprintk=serial,ttyS0 panic=-1" in text
    placed = (256 * MiB - 100_000) & ~0xFFF
    assert f"RAMDISK: [mem {placed:#010x}-{256 * MiB - 1:#010x}]" in text

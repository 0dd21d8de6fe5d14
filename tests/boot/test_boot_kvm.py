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
from pyhv.chardev import BufferBackend
from pyhv.devices.debug_exit import DebugExit
from pyhv.devices.serial import REGISTER_COUNT, Serial
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
COM1, COM1_IRQ = 0x3F8, 4
DEBUG_EXIT_PORT = 0xF4


def run_under_kvm(kernel: Path, initrd: Optional[Path], cmdline: str, ram: int,
                  seconds: float, until: Optional[bytes] = None) -> BufferBackend:
    """Boot ``kernel`` with a 16550A on COM1 and isa-debug-exit at 0xf4; the console's output."""
    from pyhv.accel.kvm import KvmAccelerator
    from pyhv.boot import load_kernel

    memory = GuestMemory(ram)
    pio, lifecycle, console = Bus("pio"), Lifecycle(), BufferBackend()
    pio.attach(DEBUG_EXIT_PORT, 4, DebugExit(lifecycle))
    accel = KvmAccelerator(Platform(memory=memory, pio=pio, mmio=Bus("mmio"), lifecycle=lifecycle, cpu_model=None))
    pio.attach(COM1, REGISTER_COUNT, Serial(accel.irq_line(COM1_IRQ), console))
    accel.load_boot_state(load_kernel(memory, kernel, initrd, cmdline))
    done = threading.Event()

    def watchdog() -> None:
        waited = 0.0
        while not done.wait(0.2) and waited < seconds:
            waited += 0.2
            if until is not None and until in console.output:
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
    return console


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
    text = run_under_kvm(kernel, None, "exit=16", 64 * MiB, seconds=30).output.decode(errors="replace")
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
    console = run_under_kvm(debian_kernel, initrd, "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1",
                            256 * MiB, seconds=240, until=b"RAMDISK:")
    text = console.output.decode(errors="replace")
    assert "Command line: console=ttyS0 earlyprintk=serial,ttyS0 panic=-1" in text
    placed = (256 * MiB - 100_000) & ~0xFFF
    assert f"RAMDISK: [mem {placed:#010x}-{256 * MiB - 1:#010x}]" in text

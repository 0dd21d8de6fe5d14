"""The default guest boots under QEMU's TCG, the peer: command mode, exit status, shell, virtio.

Each boot takes about two seconds; the guest is built once, in the user's pyhv cache.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from typing import List, Tuple

import pytest

from pyhv.guestimage import DefaultGuest, build_default_guest
from pyhv.guestimage.init_script import READY_MARKER, STATUS_MARKER

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed"),
]

BOOT_TIMEOUT_S = 120
TERMINAL_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")
DEBUG_EXIT = ["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]


@pytest.fixture(scope="module")
def guest(debian_packages) -> DefaultGuest:
    return build_default_guest()


def qemu_args(guest: DefaultGuest, append: str, devices: List[str]) -> List[str]:
    return ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", append] + devices


def run_command(guest: DefaultGuest, command: str, devices: List[str] = DEBUG_EXIT) -> Tuple[int, List[str]]:
    result = subprocess.run(qemu_args(guest, f"{guest.cmdline} -- {command}", devices),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=BOOT_TIMEOUT_S)
    # The firmware's "Booting from ROM..." and its screen-clearing escapes share a line with
    # the first guest output, so the marker ends its line rather than filling it.
    text = TERMINAL_ESCAPE.sub("", result.stdout.decode("utf-8", "replace"))
    lines = text.replace("\r", "").split("\n")
    ready = [index for index, line in enumerate(lines) if line.endswith(READY_MARKER)]
    assert ready, result.stdout[-2000:]
    return result.returncode, lines[ready[0] + 1:]


def test_uname_prints_the_kernel_version_and_exits_with_status_0(guest: DefaultGuest) -> None:
    status, output = run_command(guest, "uname -r")
    assert output[:2] == [guest.kernel_version, f"{STATUS_MARKER} 0"]
    assert status == (0 << 1) | 1


def test_command_exit_status_reaches_the_vm_exit_status(guest: DefaultGuest) -> None:
    status, output = run_command(guest, "sh -c 'exit 3'")
    assert f"{STATUS_MARKER} 3" in output
    assert status == (3 << 1) | 1


def test_without_debug_exit_the_guest_powers_off(guest: DefaultGuest) -> None:
    status, output = run_command(guest, "echo \"two words\"; false", devices=[])
    assert output[:2] == ["two words", f"{STATUS_MARKER} 1"]
    assert status == 0


def test_init_loads_the_drivers_of_the_devices_present(guest: DefaultGuest, tmp_path) -> None:
    """Coldplug: virtio-pci for the PCI functions, the drivers of the virtio devices behind it,
    and none for the devices the machine lacks (pyhv's virtio-mmio disks are checked by the
    Linux boot on the software CPU, tests/integration/test_linux_guest_ci.py)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    status, output = run_command(guest, "lsmod; cat /sys/bus/virtio/devices/*/modalias; "
                                        "cat /sys/class/misc/hw_random/rng_current",
                                 devices=DEBUG_EXIT + ["-device", "virtio-rng-pci",
                                                       "-drive", f"file={disk},if=none,id=d0,format=raw",
                                                       "-device", "virtio-blk-pci,drive=d0"])
    loaded = {line.split()[0] for line in output if line and not line.startswith(("Module", "pyhv-guest"))}
    assert {"virtio_pci", "virtio_rng", "virtio_blk", "button", "evdev"} <= loaded
    assert not loaded & {"virtio_mmio", "virtio_net", "virtio_console", "net_failover", "pvpanic_mmio"}
    assert "virtio:d00000004v00001AF4" in output  # device id 4: entropy source
    assert "virtio_rng.0" in output
    assert not [line for line in output if line.startswith("pyhv-guest: modprobe")]
    assert status == 1


def read_until(process: "subprocess.Popen[bytes]", marker: bytes, deadline: float) -> bytes:
    seen = b""
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in time; console so far: {seen[-2000:]!r}"
        ready, _, _ = select.select([process.stdout], [], [], remaining)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            assert chunk, f"QEMU ended before {marker!r}: {seen[-2000:]!r}"
            seen += chunk
    return seen


def test_shell_mode_runs_typed_commands_with_job_control(guest: DefaultGuest) -> None:
    process = subprocess.Popen(qemu_args(guest, guest.cmdline, DEBUG_EXIT),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        read_until(process, b"pyhv-guest:/# ", deadline)
        process.stdin.write(b"echo sum=$((6*7)); sleep 30 &\n")
        process.stdin.flush()
        read_until(process, b"sum=42", deadline)
        process.stdin.write(b"jobs\n")
        process.stdin.flush()
        read_until(process, b"Running", deadline)
        process.stdin.write(b"exit 4\n")
        process.stdin.flush()
        assert process.wait(timeout=BOOT_TIMEOUT_S) == (4 << 1) | 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_double_quoted_command_of_many_words_runs_unquoted(guest: DefaultGuest) -> None:
    # pyhv guest run quotes the command: unquoted, these 41 words would be 41 init arguments
    # and the kernel panics past 32 before /init runs.
    words = [f"w{n}" for n in range(40)]
    status, output = run_command(guest, '"echo ' + " ".join(words) + '"')
    assert output[:2] == [" ".join(words), f"{STATUS_MARKER} 0"]
    assert status == (0 << 1) | 1


def test_init_is_silent_about_device_classes_the_machine_lacks(guest: DefaultGuest) -> None:
    """microvm without ACPI has no keyboard and no power button, so no input device at all:
    coldplug's pattern for them matches nothing and must not complain."""
    argv = ["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-nodefaults", "-serial", "stdio",
            "-display", "none", "-m", "256", "-no-reboot", "-kernel", str(guest.kernel),
            # tsc_early_khz: on a loaded machine the kernel failed to calibrate the TSC against
            # the PIT under TCG, and microvm has no HPET or PM timer to try next: no clock at
            # all, and a hang until the test's timeout.
            "-initrd", str(guest.initrd), "-append",
            f"{guest.cmdline} tsc_early_khz=2000000 -- true"]
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=BOOT_TIMEOUT_S)
    text = result.stdout.decode("utf-8", "replace")
    assert READY_MARKER in text and f"{STATUS_MARKER} 0" in text, text[-2000:]
    assert "can't open" not in text and "/init:" not in text, text[-2000:]

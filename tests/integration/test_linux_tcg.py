"""The Debian kernel and the busybox initramfs on the software CPU (`-accel tcg`).

The default guest's /init runs the command after ` -- ` on the kernel command line and
leaves through isa-debug-exit with status (s << 1) | 1, or powers off. These boots take
minutes of CPU time, so they run on PyPy; CPython runs them with PYHV_TEST_LINUX_CPYTHON=1.
Each boot retires about 0.5 billion guest instructions to /init and took 4-8 minutes on the
shared 2-core machine (PyPy, 1-4 million instructions per second), so they are marked slow.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from typing import List

import pytest

from pyhv.cpu_model import BRAND_STRING
from pyhv.devices.pvpanic import PANIC_EXIT_STATUS

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    platform.python_implementation() != "PyPy" and os.environ.get("PYHV_TEST_LINUX_CPYTHON") != "1",
    reason="Linux boot on the software CPU runs on PyPy (CPython is too slow for CI)")]

BOOT_TIMEOUT_S = 1800
DEBUG_EXIT = "isa-debug-exit,iobase=0xf4,iosize=4"


@pytest.fixture(scope="module")
def guest():
    from pyhv.guestimage import build_default_guest

    return build_default_guest()


def boot(guest, command: str, debug_exit: bool = True, kernel_args: str = "") -> subprocess.CompletedProcess:
    """``kernel_args``: more kernel parameters, before the ` -- ` that hands ``command`` to init."""
    argv: List[str] = [sys.executable, "-m", "pyhv", "run", "-accel", "tcg", "-m", "256", "-nographic",
                       "-no-reboot", "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
                       "-append", f"{guest.cmdline}{' ' + kernel_args if kernel_args else ''} -- {command}"]
    if debug_exit:
        argv[6:6] = ["-device", DEBUG_EXIT]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=BOOT_TIMEOUT_S,
                            stdin=subprocess.DEVNULL)
    print(f"boot of {command!r}: {time.monotonic() - started:.1f} s, exit status {result.returncode}")
    return result


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit status {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def test_uname_prints_the_kernel_version_and_exits_with_its_status(guest):
    result = boot(guest, "uname -r")
    assert guest.kernel_version in result.stdout, describe(result)
    assert result.returncode == 1, describe(result)  # status 0 through isa-debug-exit: (0 << 1) | 1


def test_cpuinfo_names_the_model_and_timer_interrupts_count(guest):
    command = "cat /proc/cpuinfo; cat /proc/interrupts; sleep 1; cat /proc/interrupts"
    result = boot(guest, command)
    assert result.returncode == 1, describe(result)
    model = re.search(r"^model name\s*:\s*(.*)$", result.stdout, re.MULTILINE)
    assert model is not None and model.group(1).strip() == BRAND_STRING, describe(result)
    # The kernel took the model's SERIALIZE: its sync_core serializes without an iret.
    flags = re.search(r"^flags\s*:\s*(.*)$", result.stdout, re.MULTILINE)
    assert flags is not None and "serialize" in flags.group(1).split(), describe(result)
    # The local APIC timer line ("LOC:") or the IO-APIC timer line ("0:"), read twice.
    counts = [int(m.group(1)) for m in re.finditer(r"^\s*LOC:\s+(\d+)", result.stdout, re.MULTILINE)]
    if len(counts) < 2:
        counts = [int(m.group(1)) for m in re.finditer(r"^\s*0:\s+(\d+)", result.stdout, re.MULTILINE)]
    assert len(counts) == 2 and counts[1] > counts[0], describe(result)


def test_poweroff_ends_the_vm_with_status_zero(guest):
    result = boot(guest, "poweroff -f", debug_exit=False)
    assert result.returncode == 0, describe(result)
    assert "reboot: Power down" in result.stdout, describe(result)


def test_guest_kernel_panic_ends_pyhv_with_a_message_and_a_failure_status(guest):
    # The sysrq crash panics the kernel; init loaded pvpanic_mmio, whose notifier tells pyhv
    # before panic=-1 would reset the machine (which -no-reboot turns into exit status 0).
    result = boot(guest, "echo c > /proc/sysrq-trigger")
    assert "Kernel panic" in result.stdout, describe(result)
    assert "pyhv: guest kernel panicked" in result.stderr, describe(result)
    assert result.returncode == PANIC_EXIT_STATUS != 0, describe(result)


def test_a_panic_before_init_ends_pyhv_with_the_kernels_reason(guest):
    # No /init to run: the kernel looks for a root file system, finds none and panics long
    # before init could load pvpanic_mmio; panic=-1 then resets. pyhv read the panic on the
    # console (pyhv/panic_watch.py), so the reset under -no-reboot ends with status 1, not 0.
    result = boot(guest, "true", kernel_args="rdinit=/nonexistent")
    assert "Kernel panic - not syncing: VFS: Unable to mount root fs" in result.stdout, describe(result)
    assert "pyhv: guest kernel panicked: VFS: Unable to mount root fs" in result.stderr, describe(result)
    assert result.returncode == PANIC_EXIT_STATUS, describe(result)


def test_guest_run_prints_the_command_output_and_returns_its_status():
    # pyhv guest run: the default guest with -accel kvm:tcg, which falls back to tcg on a
    # host whose KVM cannot run Linux; the command's own status comes back, not (s << 1) | 1.
    argv = [sys.executable, "-m", "pyhv", "guest", "run", "--", "echo guest-says-hi; exit 3"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=BOOT_TIMEOUT_S,
                            stdin=subprocess.DEVNULL)
    assert "guest-says-hi" in result.stdout, describe(result)
    assert result.returncode == 3, describe(result)


def test_qmp_system_powerdown_reaches_the_guests_acpid(guest, tmp_path):
    # pyhv run -qmp: the management path of a VM started from the command line, on Linux. The
    # power button press goes through the kernel's button driver to busybox acpid, which
    # powers off: QMP's SHUTDOWN says the guest did it, and pyhv exits 0.
    import json
    import socket

    from pyhv.guestimage.init_script import POWER_BUTTON_MARKER

    path = tmp_path / "qmp.sock"
    argv = [sys.executable, "-m", "pyhv", "run", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
            "-device", DEBUG_EXIT, "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
            "-append", f'{guest.cmdline} -- "echo pyhv-ready; sleep 600"',
            "-qmp", f"unix:{path},server=on,wait=off"]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        output = []
        for line in process.stdout:  # the guest's console, up to its command's first line
            output.append(line)
            if line.strip() == "pyhv-ready":
                break
        assert output and output[-1].strip() == "pyhv-ready", "".join(output)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(BOOT_TIMEOUT_S)
            sock.connect(str(path))
            messages = sock.makefile("r")
            messages.readline()  # the greeting
            sock.sendall(b'{"execute": "qmp_capabilities"}\n{"execute": "system_powerdown"}\n')
            seen = []
            while not any(m.get("event") == "SHUTDOWN" for m in seen):
                line = messages.readline()
                assert line, f"the monitor closed before SHUTDOWN; saw {seen}"
                seen.append(json.loads(line))
        rest, err = process.communicate(timeout=BOOT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert [m["event"] for m in seen if "event" in m] == ["POWERDOWN", "SHUTDOWN"], seen
    assert seen[-1]["data"] == {"guest": True, "reason": "guest-shutdown"}, seen
    assert POWER_BUTTON_MARKER in rest and process.returncode == 0, (rest, err)

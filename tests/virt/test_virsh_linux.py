"""`pyhv virsh` end to end with the default Linux guest on the software CPU (issue #8).

One boot serves the whole scenario, driven only through the CLI a user would type:
``define`` a ``<domain type='qemu'>`` (libvirt's type for TCG, so pyhv's software CPU),
``start`` it, see ``list`` and ``domstate`` report it running, read the boot and talk to the
shell through ``pyhv virsh console``, then ``shutdown``: the guest's own acpid powers it off
through ACPI S5, and ``list --all`` shows ``shut off``. Then a second ``start`` whose guest is
still busy booting, so it cannot answer the power button, and ``destroy`` ends it at once.

The boot retires about 0.5 billion guest instructions, minutes of PyPy (see
tests/integration/test_linux_tcg.py), so the test is marked slow and runs on PyPy only;
PYHV_TEST_LINUX_CPYTHON=1 runs it on CPython too.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from pyhv.guestimage.init_script import POWER_BUTTON_MARKER, READY_MARKER

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    platform.python_implementation() != "PyPy" and os.environ.get("PYHV_TEST_LINUX_CPYTHON") != "1",
    reason="a Linux boot on the software CPU takes minutes on PyPy and far longer on CPython; "
           "set PYHV_TEST_LINUX_CPYTHON=1 to run it there anyway")]

NAME = "linux-tcg"
BOOT_TIMEOUT_S = 1800.0
PROMPT_TIMEOUT_S = 300.0
POWEROFF_TIMEOUT_S = 600.0
# A correctness bound, not a benchmark: destroy sends SIGTERM, then SIGKILL after 0.5 s.
DESTROY_BOUND_S = 5.0
BUSY_BOOT_S = 3.0  # lets the second start's vCPU get deep into the kernel before destroy
PROMPT = b"pyhv-guest:/# "  # PS1 of the default guest's /etc/profile: '\h:\w\$ '
POWER_DOWN = b"reboot: Power down"  # printed by the kernel at KERN_EMERG, so quiet keeps it


def linux_domain_xml(guest, kernel_args: str = "") -> str:
    # on_reboot=destroy: a reset that is no panic ends the domain instead of booting again.
    cmdline = f"{guest.cmdline} {kernel_args}".strip()
    return (f"<domain type='qemu'>\n  <name>{NAME}</name>\n  <memory unit='MiB'>256</memory>\n"
            f"  <vcpu>1</vcpu>\n"
            f"  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n    <kernel>{guest.kernel}</kernel>\n"
            f"    <initrd>{guest.initrd}</initrd>\n    <cmdline>{cmdline}</cmdline>\n  </os>\n"
            f"  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n"
            f"  <on_crash>destroy</on_crash>\n"
            f"  <devices>\n    <serial type='pty'/>\n    <console type='pty'/>\n  </devices>\n</domain>\n")


class Console:
    """`pyhv virsh console NAME` in a subprocess: what it prints is collected, lines are typed into it."""

    def __init__(self, env_dirs: dict) -> None:
        env = dict(os.environ, PYHV_CONFIG_DIR=str(env_dirs["config"]), PYHV_RUNTIME_DIR=str(env_dirs["runtime"]))
        self.process = subprocess.Popen([sys.executable, "-m", "pyhv", "virsh", "console", NAME], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.output = bytearray()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stdout
        while True:
            data = stream.read1(4096)
            with self._changed:
                if data:
                    self.output += data
                self._changed.notify_all()
            if not data:
                return

    def wait_for(self, needle: bytes, timeout: float, start: int = 0) -> Optional[int]:
        """Where ``needle`` appears in the output after ``start``; None on timeout or end of output."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self.output.find(needle, start)
                if found >= 0:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    return None
                self._changed.wait(min(remaining, 1.0))

    def type_line(self, line: str) -> None:
        self.process.stdin.write(line.encode() + b"\r")
        self.process.stdin.flush()

    def text(self) -> str:
        with self._changed:
            return self.output.decode("utf-8", "replace")

    def close(self) -> Optional[int]:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(5)
        stderr = self.process.stderr.read().decode("utf-8", "replace")
        self.process.stderr.close()
        self.process.stdin.close()
        self.stderr = stderr
        return self.process.returncode


def listed_state(virsh, *flags: str) -> Optional[str]:
    """The State column of NAME's row in `virsh list FLAGS`, or None if it is not listed."""
    done = virsh(["list", *flags])
    assert done.returncode == 0, done.stderr
    for row in done.stdout.decode().splitlines()[2:]:
        words = row.split()
        if len(words) >= 3 and words[1] == NAME:
            return " ".join(words[2:])
    return None


def domstate(virsh) -> str:
    done = virsh(["domstate", "--reason", NAME])
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def test_define_start_console_shutdown_destroy_a_linux_guest(virsh, store_env, tmp_path: Path) -> None:
    from pyhv.guestimage import build_default_guest

    guest = build_default_guest()
    xml = tmp_path / f"{NAME}.xml"
    xml.write_text(linux_domain_xml(guest))
    done = virsh(["define", str(xml)])
    assert done.returncode == 0, done.stderr
    assert listed_state(virsh, "--all") == "shut off"

    started = time.monotonic()
    done = virsh(["start", NAME])
    assert done.returncode == 0 and f"Domain '{NAME}' started".encode() in done.stdout, done.stderr
    console = Console(store_env)
    log_path = store_env["runtime"] / "log" / f"{NAME}.log"
    try:
        assert listed_state(virsh) == "running"
        assert domstate(virsh) == "running (booted)"

        # The guest stays up: no command after ' -- ', so /init gives a shell on the console.
        ready = console.wait_for(READY_MARKER.encode(), BOOT_TIMEOUT_S)
        assert ready is not None, f"no '{READY_MARKER}' on the console\n{console.text()}\n{log_path.read_text()}"
        print(f"/init ready {time.monotonic() - started:.0f} s after start")
        prompt = console.wait_for(PROMPT, PROMPT_TIMEOUT_S, ready)
        assert prompt is not None, console.text()
        console.type_line("echo console-$((6 * 7))")
        answer = console.wait_for(b"console-42", PROMPT_TIMEOUT_S, prompt)  # typed text reads "$((6 * 7))"
        assert answer is not None, console.text()
        assert listed_state(virsh) == "running"

        done = virsh(["shutdown", NAME])
        assert done.returncode == 0 and f"Domain '{NAME}' is being shutdown".encode() in done.stdout, done.stderr
        down = console.wait_for(POWER_DOWN, POWEROFF_TIMEOUT_S, answer)
        assert down is not None, f"the guest did not power off\n{console.text()}\n{log_path.read_text()}"
        assert console.process.wait(POWEROFF_TIMEOUT_S) == 1  # attach returns 1 when the domain goes away
    finally:
        console.close()
    output = console.text()
    print(f"--- console of {NAME} ---\n{output}\n--- end of console ---")
    # The guest's own acpid ran the handler before the kernel powered down: not a kill.
    assert 0 <= output.find(POWER_BUTTON_MARKER) < output.find(POWER_DOWN.decode()), output
    assert listed_state(virsh) is None
    assert listed_state(virsh, "--all") == "shut off"
    assert domstate(virsh) == "shut off (shutdown)"
    log = log_path.read_text()
    assert "'guest': True" in log and f"domain {NAME} shut off (shutdown)" in log, log

    # destroy: the second boot is busy in the kernel and has no acpid yet; destroy does not wait for it.
    done = virsh(["start", NAME])
    assert done.returncode == 0, done.stderr
    time.sleep(BUSY_BOOT_S)
    assert domstate(virsh) == "running (booted)"
    began = time.monotonic()
    done = virsh(["destroy", NAME])
    took = time.monotonic() - began
    print(f"destroy of the booting guest: {took:.2f} s including the virsh process start-up")
    assert done.returncode == 0 and f"Domain '{NAME}' destroyed".encode() in done.stdout, done.stderr
    assert took < DESTROY_BOUND_S
    assert domstate(virsh) == "shut off (destroyed)"
    assert listed_state(virsh, "--all") == "shut off"


def test_reboot_powers_the_guest_off_through_acpi_and_boots_it_again(virsh, store_env, tmp_path: Path) -> None:
    # virsh reboot as libvirt's default (ACPI) mode: the guest's acpid powers it off, and the
    # domain boots again instead of shutting off. Two boots: slow.
    from pyhv.guestimage import build_default_guest

    xml = tmp_path / f"{NAME}.xml"
    xml.write_text(linux_domain_xml(build_default_guest()))
    assert virsh(["define", str(xml)]).returncode == 0
    assert virsh(["start", NAME]).returncode == 0
    log_path = store_env["runtime"] / "log" / f"{NAME}.log"
    console = Console(store_env)
    try:
        ready = console.wait_for(READY_MARKER.encode(), BOOT_TIMEOUT_S)
        assert ready is not None, f"{console.text()}\n{log_path.read_text()}"
        assert console.wait_for(PROMPT, PROMPT_TIMEOUT_S, ready) is not None, console.text()
        done = virsh(["reboot", NAME])
        assert done.returncode == 0 and f"Domain '{NAME}' is being rebooted".encode() in done.stdout, done.stderr
        down = console.wait_for(POWER_DOWN, POWEROFF_TIMEOUT_S, ready)
        assert down is not None, f"the guest did not power off\n{console.text()}\n{log_path.read_text()}"
        # The same console client sees the second boot: the domain keeps its console socket.
        again = console.wait_for(READY_MARKER.encode(), BOOT_TIMEOUT_S, down)
        assert again is not None, f"no second boot\n{console.text()}\n{log_path.read_text()}"
        assert listed_state(virsh) == "running"
    finally:
        console.close()
        virsh(["destroy", NAME])
    log = log_path.read_text()
    assert "event RESET" in log and "shut off (destroyed)" in log, log


def test_a_kernel_panic_before_init_leaves_the_domain_shut_off_crashed(virsh, store_env, tmp_path: Path) -> None:
    # No /init: the kernel panics looking for a root file system, before init could load the
    # pvpanic driver, and panic=-1 resets. The domain process read the panic on the console,
    # so on_crash (destroy) decides, not on_reboot.
    from pyhv.guestimage import build_default_guest

    xml = tmp_path / f"{NAME}.xml"
    xml.write_text(linux_domain_xml(build_default_guest(), "rdinit=/nonexistent"))
    assert virsh(["define", str(xml)]).returncode == 0
    assert virsh(["start", NAME]).returncode == 0
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while listed_state(virsh) is not None and time.monotonic() < deadline:
        time.sleep(1.0)
    log = (store_env["runtime"] / "log" / f"{NAME}.log").read_text()
    assert domstate(virsh) == "shut off (crashed)", log
    assert "pyhv: guest kernel panicked: VFS: Unable to mount root fs" in log, log
    assert "GUEST_PANICKED" in log, log

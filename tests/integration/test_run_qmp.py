"""`pyhv run -qmp unix:PATH,server=on[,wait=off]`: a QMP monitor on a VM started from the command
line, driven by the qemu.qmp client (PyPI). Each scenario runs under QEMU too, with the same
command line, and must give the same replies, events and exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

qmp = pytest.importorskip("qemu.qmp", reason="the qemu.qmp client (PyPI) drives these tests")

START_TIMEOUT_S = 60.0
DEBUG_EXIT_DEVICE = "isa-debug-exit,iobase=0xf4,iosize=4"
QEMU_BINARY = "qemu-system-x86_64"
VMMS = [
    pytest.param("pyhv", id="pyhv"),
    pytest.param("qemu", id="qemu",
                 marks=pytest.mark.skipif(shutil.which(QEMU_BINARY) is None, reason="QEMU not installed")),
]


def _vm_argv(vmm: str, kernel: Path, socket_path: Path, *extra: str, wait: bool = False,
             libvirt_style: bool = False) -> List[str]:
    accel = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"
    program = [sys.executable, "-m", "pyhv", "run"] if vmm == "pyhv" else [QEMU_BINARY, "-nodefaults"]
    if libvirt_style:  # the monitor as libvirt spells it
        monitor = ["-chardev", f"socket,id=charmonitor,path={socket_path},server=on,wait=off",
                   "-mon", "chardev=charmonitor,id=monitor,mode=control"]
    else:
        monitor = ["-qmp", f"unix:{socket_path},server=on" + ("" if wait else ",wait=off")]
    return program + ["-accel", accel, "-m", "64", "-nographic", "-serial", "stdio", "-name", "qmp-guest",
                      "-device", DEBUG_EXIT_DEVICE, "-kernel", str(kernel)] + monitor + list(extra)


def _wait_for_socket(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the VM exited with status {process.returncode} before it listened: "
                        f"{process.stderr.read().decode(errors='replace')}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no QMP socket at {path} after {START_TIMEOUT_S} s")
        time.sleep(0.05)


def _client(path: Path):
    from qemu.qmp.legacy import QEMUMonitorProtocol

    asyncio.set_event_loop(asyncio.new_event_loop())  # the legacy client runs its own loop
    client = QEMUMonitorProtocol(str(path))
    client.connect(negotiate=True)
    return client


def _events(client, names: List[str]) -> List[Tuple[str, Dict[str, object]]]:
    """The next events (timestamps dropped) until each of ``names`` has arrived."""
    seen: List[Tuple[str, Dict[str, object]]] = []
    while not all(name in [event for event, _ in seen] for name in names):
        event = client.pull_event(wait=30.0)
        assert event is not None, f"waited 30 s for {names}; got {seen}"
        seen.append((event["event"], event.get("data")))  # None: no data member, as QEMU sends STOP
    return seen


def _run_scenario(vmm: str, kernel: Path, tmp_path: Path, script: Callable[[object], object],
                  *extra: str, libvirt_style: bool = False) -> Tuple[object, int, str]:
    path = tmp_path / f"{vmm}.qmp"
    # The console goes to a file: a pipe nobody reads would fill and stop the guest.
    with open(tmp_path / f"{vmm}.console", "wb") as console:
        process = subprocess.Popen(_vm_argv(vmm, kernel, path, *extra, libvirt_style=libvirt_style),
                                   stdin=subprocess.DEVNULL,
                                   stdout=console, stderr=subprocess.PIPE)
    try:
        _wait_for_socket(path, process)
        client = _client(path)
        try:
            result = script(client)
        finally:
            with contextlib.suppress(EOFError):  # the VM may have closed the connection already
                client.close()
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return result, status, process.stderr.read().decode(errors="replace")


def _pause_resume_reset_quit(client) -> List[object]:
    seen: List[object] = [client.cmd("query-status")["status"], client.cmd("query-name")]
    client.cmd("stop")
    seen.append(client.cmd("query-status")["status"])
    client.cmd("cont")
    seen.append(client.cmd("query-status")["status"])
    seen.append(_events(client, ["STOP", "RESUME"]))
    client.cmd("system_reset")
    seen.append(_events(client, ["RESET"]))
    seen.append(client.cmd("query-status")["status"])
    seen.append(client.cmd_raw("quit"))
    seen.append(_events(client, ["SHUTDOWN"]))
    return seen


@pytest.mark.parametrize("libvirt_style", [False, True], ids=["qmp", "chardev-mon"])
@pytest.mark.parametrize("vmm", VMMS)
def test_a_vm_paused_resumed_reset_and_quit_through_qmp(vmm, libvirt_style, guest_kernel, tmp_path):
    seen, status, stderr = _run_scenario(vmm, guest_kernel("loop"), tmp_path, _pause_resume_reset_quit,
                                         libvirt_style=libvirt_style)
    assert seen == [
        "running", {"name": "qmp-guest"}, "paused", "running",
        [("STOP", None), ("RESUME", None)],
        [("RESET", {"guest": False, "reason": "host-qmp-system-reset"})],
        "running",
        {"return": {}},
        [("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})],
    ], stderr
    assert status == 0, stderr
    assert not (tmp_path / f"{vmm}.qmp").exists() or vmm == "qemu"  # pyhv removes its socket


@pytest.mark.parametrize("vmm", VMMS)
def test_under_no_reboot_a_qmp_reset_ends_the_vm(vmm, guest_kernel, tmp_path):
    def reset(client):
        client.cmd("system_reset")
        return _events(client, ["SHUTDOWN"])

    events, status, stderr = _run_scenario(vmm, guest_kernel("loop"), tmp_path, reset, "-no-reboot")
    assert events == [("SHUTDOWN", {"guest": False, "reason": "host-qmp-system-reset"})], stderr
    assert status == 0, stderr


@pytest.mark.parametrize("vmm", VMMS)
def test_a_guest_reset_is_announced_and_the_guest_boots_again(vmm, guest_kernel, tmp_path):
    # tests/guests/reset.S resets through the i8042 at once: without -no-reboot it boots again
    # and again, each time a RESET the guest asked for.
    def watch(client):
        events = _events(client, ["RESET"])
        client.cmd("quit")
        return events[:1]

    events, status, stderr = _run_scenario(vmm, guest_kernel("reset"), tmp_path, watch)
    assert events == [("RESET", {"guest": True, "reason": "guest-reset"})], stderr
    assert status == 0, stderr


def test_the_guest_waits_for_the_first_client_by_default(guest_kernel, tmp_path):
    # hello.S prints and exits at once: with wait=on (QEMU's default) it must not start
    # before a client connects.
    path = tmp_path / "wait.qmp"
    process = subprocess.Popen(_vm_argv("pyhv", guest_kernel("hello"), path, wait=True),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_socket(path, process)
        time.sleep(1.0)
        assert process.poll() is None, "the guest ran before any QMP client connected"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            assert b'"QMP"' in sock.recv(4096)
            out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 33 and b"hello from the pyhv test guest" in out, (process.returncode, out, err)
    assert f"pyhv: waiting for a QMP client on unix:{path}".encode() in err


@pytest.mark.parametrize("spec, message", [
    ("unix:{missing}/q.sock,server=on,wait=off", "QMP socket {missing}/q.sock: No such file or directory"),
    ("tcp:127.0.0.1:4444,server=on,wait=off", "pyhv serves QMP on unix sockets only"),
    ("unix:{tmp}/q.sock,wait=off", "wait/nowait only applies to a server socket"),
    ("unix:{tmp}/q.sock", "pyhv's monitor listens for clients: add server=on"),
    ("unix:{tmp},server=on,wait=off", "QMP socket {tmp}: exists and is not a socket"),
    ("unix:{tmp}/" + "x" * 120 + ",server=on,wait=off", "path longer than 107 bytes"),
])
def test_a_bad_qmp_option_is_one_clear_error_and_no_vm(spec, message, guest_kernel, tmp_path):
    missing = tmp_path / "no-such-dir"
    spec = spec.format(missing=missing, tmp=tmp_path)
    done = subprocess.run([sys.executable, "-m", "pyhv", "run", "-accel", "tcg", "-nographic",
                           "-device", DEBUG_EXIT_DEVICE, "-kernel", str(guest_kernel("hello")), "-qmp", spec],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 1 and b"hello from" not in done.stdout, err
    assert err.startswith("pyhv: ") and message.format(missing=missing, tmp=tmp_path) in err, err
    assert "Traceback" not in err, err
    assert os.listdir(tmp_path) == [], "nothing left behind"


@pytest.mark.parametrize("vmm", VMMS)
def test_pidfile_names_the_running_vm_and_goes_with_it(vmm, guest_kernel, tmp_path):
    pidfile = tmp_path / f"{vmm}.pid"

    def check(client):
        return pidfile.read_text(), client.cmd_raw("quit")

    (text, _), status, stderr = _run_scenario(vmm, guest_kernel("loop"), tmp_path, check, "-pidfile", str(pidfile))
    assert text.strip().isdigit() and status == 0, stderr
    assert not pidfile.exists()  # QEMU removes it at exit too


def _gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("vmm", VMMS)
def test_daemonize_returns_once_the_vm_runs_detached(vmm, guest_kernel, tmp_path):
    pidfile, path, console = tmp_path / "vm.pid", tmp_path / "vm.qmp", tmp_path / "console.log"
    accel = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"
    program = [sys.executable, "-m", "pyhv", "run"] if vmm == "pyhv" else [QEMU_BINARY, "-nodefaults"]
    done = subprocess.run(program + [
        "-accel", accel, "-m", "64", "-display", "none", "-serial", f"file:{console}",
        "-kernel", str(guest_kernel("loop")), "-qmp", f"unix:{path},server=on,wait=off",
        "-pidfile", str(pidfile), "-daemonize"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout == b"", done.stderr
    pid = int(pidfile.read_text())  # in place as soon as the command returned, as the socket
    try:
        client = _client(path)
        deadline = time.monotonic() + 30  # QEMU's firmware runs first
        while b"loop guest running" not in console.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(EOFError):
            assert client.cmd("query-status")["status"] == "running"
            assert client.cmd_raw("quit") == {"return": {}}
            client.close()
        assert _gone(pid), "the detached VM did not end on quit"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    assert not pidfile.exists() and b"loop guest running" in console.read_bytes()


def test_daemonize_refuses_a_console_on_stdio_and_reports_a_failed_start(guest_kernel, tmp_path):
    base = [sys.executable, "-m", "pyhv", "run", "-accel", "tcg", "-daemonize"]
    done = subprocess.run(base + ["-nographic", "-kernel", str(guest_kernel("loop"))],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert done.returncode == 1 and b"-daemonize: the console is on stdio" in done.stderr, done.stderr
    # A kernel that is not one: the child says why on the command's stderr, the command fails.
    not_a_kernel = tmp_path / "junk"
    not_a_kernel.write_bytes(b"\0" * 4096)
    done = subprocess.run(base + ["-serial", "none", "-kernel", str(not_a_kernel)],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith(b"pyhv: ") and b"Traceback" not in done.stderr, \
        done.stderr

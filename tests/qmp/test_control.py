"""MachineControl: commands act on the machine a VM process runs now, across its rebuilds."""

from __future__ import annotations

import threading
import time

import pytest

from pyhv.qmp.commands import QmpError
from pyhv.qmp.control import QUIT_REASON, MachineControl


class FakeLifecycle:
    def __init__(self) -> None:
        self.stops = []

    def shutdown(self, status: int, reason: str) -> None:
        self.stops.append((status, reason))


class FakeMachine:
    paused = False

    def __init__(self) -> None:
        self.lifecycle = FakeLifecycle()


def test_a_command_between_two_machines_waits_for_the_next():
    control = MachineControl("vm")
    control.machine = FakeMachine()
    control.machine = None  # a reset: the VM process builds the next machine
    following = FakeMachine()
    threading.Timer(0.2, lambda: setattr(control, "machine", following)).start()
    started = time.monotonic()
    control.quit()
    assert following.lifecycle.stops == [(0, QUIT_REASON)]
    assert 0.1 < time.monotonic() - started < 5


def test_after_the_last_machine_a_command_fails_at_once():
    control = MachineControl("vm")
    control.machine = FakeMachine()
    control.finish()
    started = time.monotonic()
    with pytest.raises(QmpError, match="the VM has stopped"):
        control.quit()
    assert time.monotonic() - started < 1


def test_before_any_machine_a_command_fails_at_once():
    control = MachineControl("vm")
    with pytest.raises(QmpError, match="being rebuilt"):
        control.powerdown()
    assert control.status() == "running"


def test_a_command_waiting_for_the_next_machine_does_not_hold_up_events(tmp_path):
    # The VM process announces a reset (RESET) before it builds the next machine; a command
    # that arrived in between waits for that machine and must not block the announcement.
    import json
    import socket

    from pyhv.qmp.server import QmpServer

    control = MachineControl("vm")
    control.machine = FakeMachine()
    server = QmpServer(str(tmp_path / "q.sock"), control)
    server.start()
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(tmp_path / "q.sock"))
    lines = client.makefile("rb")
    try:
        lines.readline()  # the greeting
        client.sendall(b'{"execute": "qmp_capabilities"}\n')
        assert json.loads(lines.readline()) == {"return": {}}
        control.machine = None  # the machine stopped for a reset
        client.sendall(b'{"execute": "quit", "id": 1}\n')
        time.sleep(0.2)  # the quit is now waiting for a machine
        started = time.monotonic()
        server.emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        assert time.monotonic() - started < 1
        following = FakeMachine()
        control.machine = following
        messages = [json.loads(lines.readline()) for _ in range(2)]
        assert [m.get("event", m.get("return")) for m in messages] == ["RESET", {}]
        assert following.lifecycle.stops == [(0, QUIT_REASON)]
    finally:
        client.close()
        control.finish()
        server.close()

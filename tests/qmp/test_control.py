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

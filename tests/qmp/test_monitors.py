"""The QMP events of a `pyhv run` process when its machine stops: QEMU's (pyhv/qmp/monitors.py).

tests/integration/test_run_qmp.py checks the same against QEMU itself, for the stops it can
cause; the panics are pyhv's own (QEMU does not read the console).
"""

from __future__ import annotations

import pytest

from pyhv.devices.pvpanic import PANIC_REASON
from pyhv.lifecycle import Reset, Shutdown
from pyhv.qmp.monitors import stop_events


@pytest.mark.parametrize("stop, panic, reboots, events", [
    (("shutdown", "ACPI power-off"), None, True, [("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})]),
    (("shutdown", "host-qmp-quit"), None, True, [("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})]),
    (("shutdown", "terminating on signal 15"), None, True,
     [("SHUTDOWN", {"guest": False, "reason": "host-signal"})]),
    (("shutdown", "pvpanic: guest panicked"), "oops", True,
     [("GUEST_PANICKED", {"action": "poweroff"}), ("SHUTDOWN", {"guest": True, "reason": "guest-panic"})]),
    (("reset", "i8042 reset"), None, True, [("RESET", {"guest": True, "reason": "guest-reset"})]),
    (("reset", "i8042 reset"), None, False, [("SHUTDOWN", {"guest": True, "reason": "guest-reset"})]),
    (("reset", "i8042 reset"), "VFS: Unable to mount root fs", True,
     [("GUEST_PANICKED", {"action": "run"}), ("RESET", {"guest": True, "reason": "guest-reset"})]),
    (("reset", "i8042 reset"), "VFS: Unable to mount root fs", False,
     [("GUEST_PANICKED", {"action": "poweroff"}), ("SHUTDOWN", {"guest": True, "reason": "guest-reset"})]),
    (("reset", "host-qmp-system-reset"), None, False,
     [("SHUTDOWN", {"guest": False, "reason": "host-qmp-system-reset"})]),
])
def test_stop_events_are_qemus(stop, panic, reboots, events):
    kind, reason = stop
    reason = reason.replace("pvpanic: guest panicked", PANIC_REASON)
    request = Shutdown(0, reason) if kind == "shutdown" else Reset(reason)
    assert stop_events(request, panic, reboots) == events

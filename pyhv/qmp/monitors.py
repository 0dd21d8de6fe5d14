"""The QMP monitors of a VM process, and the events QEMU sends when its machine stops
(:func:`stop_events`, which `pyhv run` follows; a domain's runner, pyhv.virt.runner, follows
its domain's ``on_*`` policies instead).
"""

from __future__ import annotations

import signal
import sys
from typing import Dict, List, Optional, Sequence, Set, Tuple

from ..config import QmpSocketSpec
from ..devices.pvpanic import PANIC_REASON as GUEST_PANIC_REASON
from ..lifecycle import Shutdown, StopRequest
from .control import QMP_RESET_REASON, QUIT_REASON, MachineControl
from .server import QmpServer

# The stop reason `pyhv run` gives a terminating signal, followed by the signal's number.
SIGNAL_REASON = "terminating on signal"


class Monitors:
    """The QMP monitors of a VM process and the control they act through: `pyhv run`'s
    ``-qmp`` sockets (opened by :meth:`attach` at the first machine), or a domain runner's
    socket (opened by :meth:`listen` before any machine, the runner its own control)."""

    def __init__(self, main_thread_signals: Set[int], control: Optional[MachineControl] = None) -> None:
        """``main_thread_signals``: signals the monitors' threads block, so that they reach
        the VM process's main thread."""
        self.main_thread_signals = main_thread_signals
        self.control = control
        self.servers: List[QmpServer] = []

    def attach(self, machine, config) -> None:
        """Act on ``machine`` from now on (None: no machine runs); the first time, open the
        monitors ``config`` asks for."""
        if self.control is None and config.qmp and machine is not None:
            self.control = MachineControl(config.name)
            self.control.machine = machine
            self.listen(config.qmp)
        elif self.control is not None:
            self.control.machine = machine

    def listen(self, specs: Sequence[QmpSocketSpec]) -> None:
        """Listen on each socket; then wait for the first client of those that ask it (QEMU's
        ``wait=on``, its default), before the guest starts."""
        assert self.control is not None
        opened: List[QmpServer] = []
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.main_thread_signals)
        try:
            for spec in specs:
                server = QmpServer(spec.path, self.control)
                self.servers.append(server)  # close() closes it, whatever happens next
                opened.append(server)
                server.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for spec, server in zip(specs, opened):
            if spec.wait:
                print(f"pyhv: waiting for a QMP client on unix:{spec.path}", file=sys.stderr, flush=True)
                server.wait_for_client()

    def emit(self, events: List[Tuple[str, Dict[str, object]]]) -> None:
        for server in self.servers:
            for event, data in events:
                server.emit(event, data)

    def close(self) -> None:
        if self.control is not None:
            self.control.finish()
        for server in self.servers:
            server.close()


def stop_events(stop: StopRequest, panic: Optional[str], reboots: bool) -> List[Tuple[str, Dict[str, object]]]:
    """The QMP events QEMU sends when its machine stops for ``stop``: ``panic`` is the reason
    of a kernel panic seen on the console, ``reboots`` whether a reset boots the guest again
    (QEMU's -no-reboot turns every reset into a shutdown)."""
    if isinstance(stop, Shutdown):
        if stop.reason.startswith(GUEST_PANIC_REASON):
            return [("GUEST_PANICKED", {"action": "poweroff"}), ("SHUTDOWN", {"guest": True, "reason": "guest-panic"})]
        if stop.reason == QUIT_REASON:
            return [("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})]
        if stop.reason.startswith(SIGNAL_REASON):
            return [("SHUTDOWN", {"guest": False, "reason": "host-signal"})]
        return [("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})]
    by_guest = stop.reason != QMP_RESET_REASON
    events: List[Tuple[str, Dict[str, object]]] = []
    if panic is not None and by_guest:
        events.append(("GUEST_PANICKED", {"action": "run" if reboots else "poweroff"}))
    events.append(("RESET" if reboots else "SHUTDOWN",
                   {"guest": by_guest, "reason": "guest-reset" if by_guest else QMP_RESET_REASON}))
    return events

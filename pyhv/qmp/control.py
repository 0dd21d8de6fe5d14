"""The VmControl of a VM process: QMP's commands acting on the machine it runs now.

A VM process builds a new Machine on each reset, so the monitor acts on ``machine`` as it is
at the moment of the command; a command that arrives while it is being rebuilt waits for the
new one (up to REBUILD_WAIT_S), and one after the VM's end fails at once. Both VM
processes use it: ``pyhv run -qmp`` (pyhv.cli) and a domain's runner (pyhv.virt.runner), which
also records pauses in the domain's status file (:meth:`MachineControl.paused_changed`).
"""

from __future__ import annotations

import threading
from typing import Dict, Optional

from .commands import GENERIC_ERROR, QmpError

# Stop reasons that QMP commands give the machine's lifecycle; the VM process reads them back
# to tell a host's request from the guest's own.
QUIT_REASON = "host-qmp-quit"
QMP_RESET_REASON = "host-qmp-system-reset"
# How long a command waits for the machine being built after a reset (a Linux guest's takes
# well under a second).
REBUILD_WAIT_S = 10.0


class MachineControl:
    """What the monitor may ask of the machine in ``machine`` (None while none runs)."""

    def __init__(self, name: Optional[str] = None) -> None:
        self.name = name
        self._machine = None
        self._attached = threading.Condition()
        self._ever_attached = False
        self._finished = False
        self._vcpu_thread_id = threading.get_native_id()
        self._pause_lock = threading.Lock()
        # Set by reboot(): the guest's next power-off boots the machine again.
        self.reboot_on_poweroff = False

    @property
    def machine(self):
        return self._machine

    @machine.setter
    def machine(self, machine) -> None:
        """The machine commands act on from now on; None between a machine and the next."""
        with self._attached:
            self._machine = machine
            self._ever_attached = self._ever_attached or machine is not None
            self._attached.notify_all()

    def finish(self) -> None:
        """No machine will come any more: commands fail at once instead of waiting for one."""
        with self._attached:
            self._machine = None
            self._finished = True
            self._attached.notify_all()

    def paused_changed(self, state: str, reason: str) -> None:
        """Called after a pause ("paused", "user") or a resume ("running", "unpaused")."""

    def status(self) -> str:
        machine = self.machine
        return "paused" if machine is not None and machine.paused else "running"

    def pause(self) -> None:
        with self._pause_lock:
            self._require_machine().pause()
            self.paused_changed("paused", "user")

    def resume(self) -> None:
        with self._pause_lock:
            self._require_machine().resume()
            self.paused_changed("running", "unpaused")

    def powerdown(self) -> None:
        if not self._require_machine().request_powerdown():
            raise QmpError(GENERIC_ERROR, "this machine has no ACPI power button (no ACPI PM device attached)")

    def reset(self) -> None:
        self._require_machine().lifecycle.reset(QMP_RESET_REASON)

    def reboot(self) -> None:
        self.reboot_on_poweroff = True
        try:
            self.powerdown()
        except QmpError:
            self.reboot_on_poweroff = False
            raise

    def quit(self) -> None:
        self._require_machine().lifecycle.shutdown(0, QUIT_REASON)

    def registers(self) -> Dict[str, int]:
        with self._pause_lock:
            machine = self._require_machine()
            if machine.paused:
                return machine.registers()
            if not machine.pause():
                machine.resume()
                raise QmpError(GENERIC_ERROR, "the vCPU did not stop in time to read its registers")
            try:
                return machine.registers()
            finally:
                machine.resume()

    def vcpu_thread_id(self) -> int:
        return self._vcpu_thread_id

    def _require_machine(self):
        # Between a reset and the machine built after it, a command waits for the new one (a
        # client that sends quit as soon as it sees RESET must not get an error for it).
        with self._attached:
            if self._ever_attached:
                self._attached.wait_for(lambda: self._machine is not None or self._finished, REBUILD_WAIT_S)
            machine = self._machine
        if machine is None:
            raise QmpError(GENERIC_ERROR, "the VM has stopped" if self._finished
                           else "the machine is being rebuilt; try again")
        return machine

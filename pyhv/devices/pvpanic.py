"""QEMU's ``pvpanic`` ISA device: one I/O port (0x505 by default) through which a guest kernel
says that it panicked.

A read returns the events the device understands; the guest writes back the one that happened.
Linux's ``pvpanic-mmio`` driver finds the port through the ACPI device ``QEMU0001`` (see
:func:`pyhv.acpi.dsdt.pvpanic`) and writes from its panic notifier, which runs before
``panic=N`` reboots the machine, so the VM ends with a non-zero status and a message instead of
a silent reset. A crash kernel that is loaded (kdump) handles the panic itself: that event is
recorded, and the guest keeps running, as QEMU does.
"""

from __future__ import annotations

from typing import List

from ..lifecycle import Lifecycle

DEFAULT_IOPORT = 0x505
IOPORT_LEN = 1
PANICKED = 1 << 0  # the host should handle the panic
CRASH_LOADED = 1 << 1  # the guest's crash kernel handles it; the host only takes note
SUPPORTED_EVENTS = PANICKED | CRASH_LOADED
# QEMU's -action panic=exit-failure status: a panic is a failure of the guest.
PANIC_EXIT_STATUS = 1
PANIC_REASON = "guest kernel panicked"


class PvPanic:
    """The event port; attach it at ``ioport`` with length :data:`IOPORT_LEN`."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self.events: List[int] = []  # every event word the guest wrote, for QMP and tests

    def read(self, offset: int, size: int) -> int:
        return SUPPORTED_EVENTS

    def write(self, offset: int, size: int, value: int) -> None:
        # Bits the device does not know are ignored, as the QEMU spec asks of both sides.
        event = value & SUPPORTED_EVENTS
        if not event:
            return
        self.events.append(event)
        if event & PANICKED:
            self._lifecycle.shutdown(PANIC_EXIT_STATUS, PANIC_REASON)

"""How devices ask the VM to stop or reset, without knowing who runs it.

A device (isa-debug-exit, the i8042 reset line, ACPI power-off) calls a method of
:class:`Lifecycle`; the run loop of whichever accelerator checks :attr:`Lifecycle.pending`
after each exit and acts on it.
"""

from __future__ import annotations

import threading
from typing import Callable, List, NamedTuple, Optional, Union


class Shutdown(NamedTuple):
    """The VM ends; the pyhv process exits with ``status``."""

    status: int
    reason: str


class Reset(NamedTuple):
    """The guest asked for a reboot (i8042 reset line, triple fault, ACPI reset)."""

    reason: str


StopRequest = Union[Shutdown, Reset]


class Lifecycle:
    """The pending stop request of one VM, set by devices, consumed by the run loop."""

    def __init__(self) -> None:
        self.pending: Optional[StopRequest] = None
        self.stopped = threading.Event()
        self._listeners: List[Callable[[], None]] = []
        # The reason of a kernel panic the guest printed on its console (pyhv.panic_watch),
        # for whoever reports the reset or the stop that follows it.
        self.guest_panic: Optional[str] = None

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from the requesting thread) whenever a stop is requested,
        e.g. so the accelerator can kick its vCPU out of the guest."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self) -> None:
        self.stopped.set()
        for callback in self._listeners:
            callback()

    def note_guest_panic(self, reason: str) -> None:
        """The guest's kernel said it panicked (the first reason is kept); it may reset next."""
        if self.guest_panic is None:
            self.guest_panic = reason

    def shutdown(self, status: int, reason: str) -> None:
        # The first request wins: a debug-exit followed by a reset must keep its status.
        if self.pending is None:
            self.pending = Shutdown(status, reason)
            self._notify()

    def reset(self, reason: str) -> None:
        if self.pending is None:
            self.pending = Reset(reason)
            self._notify()

    def clear(self) -> None:
        self.pending = None
        self.stopped.clear()

"""Virtqueue processing off the vCPU thread: eventfds per queue, one thread polling them.

A queue's kick is an eventfd. Under KVM the accelerator binds it to the queue's notify
address with KVM_IOEVENTFD, so the guest's write to QueueNotify never leaves the kernel:
the vCPU goes straight back into the guest and this thread wakes. Where the accelerator
cannot (the software CPU), the transport sees the write as before and signals the same
eventfd itself. Either way the disk I/O runs here, not on the vCPU thread.

The thread calls ``device.notify(index)``, which takes the device's ``queue_lock``; a reset
from the vCPU thread takes the same lock, so it waits for the batch in flight to end.

eventfd(2) comes through ctypes: ``os.eventfd`` is Python 3.10+ and PyPy 3.9 lacks it, and
KVM_IOEVENTFD accepts nothing but an eventfd (a pipe is refused).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import threading
from typing import Callable, Dict, List, NamedTuple, Optional

from ...errors import PyhvError

log = logging.getLogger("pyhv.virtio.iothread")

EFD_CLOEXEC = 0o2000000
EFD_NONBLOCK = 0o4000
_ONE = (1).to_bytes(8, "little")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_eventfd = _libc.eventfd
_eventfd.restype = ctypes.c_int
_eventfd.argtypes = [ctypes.c_uint, ctypes.c_int]


# (address, length, datamatch or None, eventfd) -> a function that undoes it, or None where
# the accelerator cannot bind a guest write to an eventfd (pyhv.accel.base.Accelerator.doorbell).
Doorbell = Callable[[int, int, Optional[int], int], Optional[Callable[[], None]]]


class IoThreadError(PyhvError):
    """The I/O thread could not be set up (no eventfd, a queue registered twice)."""


class EventFd:
    """A non-blocking eventfd: ``signal()`` adds one, ``drain()`` reads the count back to 0."""

    def __init__(self) -> None:
        fd = _eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if fd < 0:
            err = ctypes.get_errno()
            raise IoThreadError(f"eventfd: {os.strerror(err)}")
        self.fd = fd

    def signal(self) -> None:
        try:
            os.write(self.fd, _ONE)
        except BlockingIOError:
            pass  # the counter is at its maximum: the reader is woken anyway

    def drain(self) -> int:
        """The number of signals since the last drain (0 if none)."""
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class QueueKick(NamedTuple):
    """One registered queue: the eventfd that kicks it and what to call then."""

    event: EventFd
    name: str
    handler: Callable[[], None]


class IoThread:
    """One thread serving the kicks of any number of queues (QEMU's ``-object iothread``).

    Register queues with :meth:`add_queue` (before or after :meth:`start`); each returns the
    eventfd that the accelerator binds to the notify address or the transport signals.
    """

    def __init__(self, name: str = "pyhv-iothread") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._kicks: Dict[int, QueueKick] = {}  # fd -> kick
        self._control = EventFd()  # wakes the loop to re-read _kicks or to stop
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self.batches = 0  # handler calls (one per wake-up of a queue, however many kicks it had)
        self.kicks = 0  # eventfd signals consumed
        self.failures = 0  # handlers that raised

    # --- registration ------------------------------------------------------------------------
    def add_queue(self, name: str, handler: Callable[[], None]) -> EventFd:
        """Serve ``handler()`` on this thread whenever the returned eventfd is signalled."""
        event = EventFd()
        with self._lock:
            self._kicks[event.fd] = QueueKick(event, name, handler)
        self._control.signal()
        return event

    def remove_queue(self, event: EventFd) -> None:
        with self._lock:
            kick = self._kicks.pop(event.fd, None)
        if kick is None:
            raise IoThreadError(f"{self.name}: eventfd {event.fd} serves no queue")
        self._control.signal()
        # The loop may still hold the fd in its poll set; it is closed once the loop has
        # let go of it, which the lock below guarantees.
        with self._lock:
            event.close()

    @property
    def queue_names(self) -> List[str]:
        with self._lock:
            return [kick.name for kick in self._kicks.values()]

    # --- the thread -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Finish the batch in progress and end the thread (idempotent)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._control.signal()
        thread.join()
        self._thread = None

    def close(self) -> None:
        self.stop()
        with self._lock:
            kicks, self._kicks = list(self._kicks.values()), {}
        for kick in kicks:
            kick.event.close()
        self._control.close()

    def _poller(self) -> "select.poll":
        poller = select.poll()
        poller.register(self._control.fd, select.POLLIN)
        for fd in self._kicks:
            poller.register(fd, select.POLLIN)
        return poller

    def _loop(self) -> None:
        with self._lock:
            poller = self._poller()
        while not self._stopping:
            ready = poller.poll()
            with self._lock:
                if self._control.drain():
                    poller = self._poller()
                kicks = [self._kicks.get(fd) for fd, _events in ready]
                # Drained under the lock, so remove_queue cannot close an fd in use here.
                counts = [kick.event.drain() if kick is not None else 0 for kick in kicks]
            for kick, count in zip(kicks, counts):
                if kick is None or not count or self._stopping:
                    continue
                self.kicks += count
                self.batches += 1
                try:
                    kick.handler()
                except Exception:  # a device bug must not end every queue's service
                    self.failures += 1
                    log.exception("%s: queue %s failed", self.name, kick.name)

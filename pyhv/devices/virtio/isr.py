"""The interrupt status bits of a virtio transport and the level-triggered line behind them.

virtio-mmio (InterruptStatus/InterruptACK) and virtio-pci without MSI-X (the ISR register,
cleared by reading it) drive a level-triggered line: high while a status bit is set. The
I/O thread and the workers set bits; the vCPU thread clears them. Changing the line is a
system call under KVM (KVM_IRQ_LINE), so it must not run under the lock that the vCPU's
acknowledgement takes: the vCPU would wait for another thread's system call, and on PyPy a
thread blocked on a ``threading`` lock takes 160 µs to wake.

So the lock guards the bits and the level the line *should* have, with a version that
counts changes of it; the line is driven outside the lock, by one thread at a time (the
applier). A thread that changes the wanted level and finds the applier busy leaves at once:
the applier re-reads the wanted level after each system call and after letting go, and
drives the line again until the level it applied is the latest. So an acknowledgement that
clears the last bit is never undone by a stale raise finishing later, a raise is never lost
to a stale lowering, and the line (whose cached level, as in
:class:`pyhv.irq.CallbackIrqLine`, is not safe to drive from two threads at once) sees one
caller at a time. While two threads race, the line can be briefly high with no bit set;
the guest then reads a status of 0 and calls the interrupt spurious, as it may under QEMU.
"""

from __future__ import annotations

import threading
from typing import Callable


class InterruptStatus:
    """Status bits and a level line that is high while any bit is set (``set_level`` drives it)."""

    def __init__(self, set_level: Callable[[bool], None]) -> None:
        self._set_level = set_level
        self._lock = threading.Lock()
        self._applier = threading.Lock()
        self.bits = 0
        self._wanted = False  # the level the bits call for, once raised
        self._version = 0  # changes of _wanted
        self._applied = 0  # the version last driven onto the line (by the applier only)

    @property
    def level(self) -> bool:
        """The level the line is being driven to."""
        return self._wanted

    def raise_bits(self, causes: int, drive_line: bool = True) -> None:
        """Set ``causes``; raise the line unless ``drive_line`` is False (MSI-X delivers the
        interrupt instead, but the driver may still read the bit)."""
        with self._lock:
            self.bits |= causes
            if self._wanted or not drive_line or not self.bits:
                return  # already high (or on its way up): nothing to drive
            self._wanted = True
            self._version += 1
        self._apply()

    def clear(self, causes: int) -> int:
        """Clear ``causes``; lower the line once no bit is left. The bits set before."""
        with self._lock:
            before = self.bits
            self.bits &= ~causes
            if self.bits or not self._wanted:
                return before
            self._wanted = False
            self._version += 1
        self._apply()
        return before

    def take(self) -> int:
        """Read and clear every bit (virtio-pci's ISR register)."""
        return self.clear(-1)

    def _apply(self) -> None:
        while self._applier.acquire(False):
            try:
                while True:
                    with self._lock:
                        level, version = self._wanted, self._version
                    if version == self._applied:
                        break
                    self._set_level(level)
                    self._applied = version
            finally:
                self._applier.release()
            # A change made while this thread held the applier found it busy and left it to
            # us; one made after the release is its maker's to apply.
            if self._version == self._applied:
                return

"""QEMU's ``isa-debug-exit`` (``-device isa-debug-exit,iobase=0xf4,iosize=4``).

A write of value ``v`` ends the VM. QEMU calls ``exit((v << 1) | 1)``, and the kernel keeps
only the low 8 bits of an exit status, so the process exits with ``((v << 1) | 1) & 0xff``:
always odd, which tells a test harness that the guest chose to exit. Only the low 7 bits of
``v`` matter: 0x80 gives 1 and 0xffffffff gives 255.
"""

from __future__ import annotations

from ..lifecycle import Lifecycle

DEFAULT_IOBASE = 0x501  # QEMU's defaults when -device isa-debug-exit has no options
DEFAULT_IOSIZE = 2
EXIT_STATUS_MASK = 0xFF
SHUTDOWN_REASON_PREFIX = "isa-debug-exit:"  # how the shutdown reason starts (pyhv guest run reads it)


def exit_status(value: int, size: int) -> int:
    """The process exit status QEMU gives for a guest write of ``value`` with ``size`` bytes."""
    value &= (1 << (8 * size)) - 1
    return ((value << 1) | 1) & EXIT_STATUS_MASK


class DebugExit:
    """The debug-exit port; attach it at ``iobase`` with length ``iosize``."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle

    def read(self, offset: int, size: int) -> int:
        return 0  # QEMU gives the region no read handler; nothing reads it on purpose

    def write(self, offset: int, size: int, value: int) -> None:
        # Like QEMU, the offset inside the window does not matter.
        status = exit_status(value, size)
        self._lifecycle.shutdown(status, f"{SHUTDOWN_REASON_PREFIX} guest wrote {value:#x} ({size} bytes)")

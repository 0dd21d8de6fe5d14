"""The accelerator seam: what the machine asks of KVM or the software CPU.

The machine builds guest memory, the two buses and the devices, then hands them to an
accelerator. Devices never see the accelerator; they see IRQ lines it provides.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from typing import Protocol

from ..bus import Bus
from ..cpu_model import CpuModel
from ..cpu_state import CpuBootState
from ..irq import IrqLine
from ..lifecycle import Lifecycle, StopRequest
from ..memory import GuestMemory


@dataclass
class Platform:
    """Everything an accelerator runs the guest against."""

    memory: GuestMemory
    pio: Bus
    mmio: Bus
    lifecycle: Lifecycle
    cpu_model: Optional[CpuModel]  # None: -cpu host
    # The software CPU's virtual time (QEMU's -icount): 2**shift ns per instruction, or None
    # for host time; with icount_sleep a halted guest waits in real time for its next timer.
    icount_shift: Optional[int] = 0
    icount_sleep: bool = True
    # Where the software CPU keeps the hot-block hints of this guest between boots
    # (pyhv.accel.tcg.hints), and beside them its translated code (.codecache); None: it
    # keeps neither.
    tcg_hints: Optional[Path] = None


class Accelerator(Protocol):
    name: str

    def irq_line(self, gsi: int) -> IrqLine:
        """The line a device drives to raise GSI ``gsi`` (ISA IRQs are GSIs 0-15)."""

    def load_boot_state(self, state: CpuBootState) -> None:
        """Put the boot vCPU into the loader's entry state."""

    def clock_ns(self) -> int:
        """The guest's time in ns: what its timers count (host time under KVM, the software
        CPU's virtual clock under TCG). Devices with their own counters read it."""

    def msi_sink(self):
        """An object with ``send_msi(address, data)`` that delivers a PCI MSI to the vCPUs."""

    def doorbell(self, addr: int, length: int, datamatch: Optional[int], fd: int) -> Optional[Callable[[], None]]:
        """Signal eventfd ``fd`` on every guest MMIO write of ``length`` bytes at ``addr``
        (only of the value ``datamatch``, if given) instead of passing it to the MMIO bus.

        This is how a virtqueue's notify reaches an I/O thread without stopping the vCPU
        (KVM_IOEVENTFD). Returns a function that undoes the binding, or None where this
        accelerator cannot bind writes to eventfds: the write then reaches the bus as
        before, and the device (the transport) signals the eventfd itself. Both the
        interrupt lines (``irq_line``) and the MSI sink may be driven from any thread.
        """

    def run(self) -> StopRequest:
        """Run the guest until a device, the guest or the user asks it to stop."""

    def close(self) -> None: ...


class PauseGate:
    """Holds a vCPU run loop between exits while the VM is paused (QMP ``stop``/``cont``).

    Another thread calls :meth:`request` and kicks the vCPU; the run loop sees
    :attr:`requested` at its next exit or slice boundary and calls :meth:`park`, which
    returns on :meth:`release` or once a stop request is pending (a paused VM can still be
    shut down or reset).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.requested = False
        self.parked = False

    def request(self) -> None:
        with self._cond:
            self.requested = True

    def release(self) -> None:
        with self._cond:
            self.requested = False
            self._cond.notify_all()

    def wake(self) -> None:
        """Let a parked loop look at the lifecycle again (called by the accelerator's kick)."""
        with self._cond:
            self._cond.notify_all()

    def park(self, lifecycle: Lifecycle) -> None:
        with self._cond:
            self.parked = True
            self._cond.notify_all()
            while self.requested and lifecycle.pending is None:
                self._cond.wait()
            self.parked = False
            self._cond.notify_all()

    def wait_parked(self, timeout: float) -> bool:
        """True once the run loop is parked; False if it did not get there in ``timeout`` s."""
        with self._cond:
            return self._cond.wait_for(lambda: self.parked or not self.requested, timeout) and self.parked

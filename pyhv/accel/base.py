"""The accelerator seam: what the machine asks of KVM or the software CPU.

The machine builds guest memory, the two buses and the devices, then hands them to an
accelerator. Devices never see the accelerator; they see IRQ lines it provides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore

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


class Accelerator(Protocol):
    name: str

    def irq_line(self, gsi: int) -> IrqLine:
        """The line a device drives to raise GSI ``gsi`` (ISA IRQs are GSIs 0-15)."""

    def load_boot_state(self, state: CpuBootState) -> None:
        """Put the boot vCPU into the loader's entry state."""

    def run(self) -> StopRequest:
        """Run the guest until a device, the guest or the user asks it to stop."""

    def close(self) -> None: ...

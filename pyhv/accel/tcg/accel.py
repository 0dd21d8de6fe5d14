"""The software-CPU accelerator: the Cpu, a run loop in time slices, and idle waits on HLT.

There is no kernel irqchip here; pyhv's own interrupt controllers and timers (in
pyhv/devices/) are attached by this accelerator, since under KVM the kernel provides them.
"""

from __future__ import annotations

import threading
from typing import Dict

from ...errors import AccelError
from ...irq import CallbackIrqLine, IrqLine
from ...lifecycle import Reset, StopRequest
from ..base import Platform
from .cpu import Cpu, StopReason

# Instructions per slice between looks at timers, other threads' requests and the clock.
SLICE = 20_000
# How long a halted CPU with no timer pending sleeps before looking again.
IDLE_WAIT_S = 0.05


class TcgAccelerator:
    name = "tcg"

    def __init__(self, platform: Platform) -> None:
        if platform.cpu_model is None:
            raise AccelError("-cpu host needs KVM; the software CPU implements -cpu pyhv64")
        self.platform = platform
        self.cpu = Cpu(platform.memory, platform.pio, platform.mmio, platform.lifecycle, platform.cpu_model)
        self._wakeup = threading.Event()
        self._lines: Dict[int, CallbackIrqLine] = {}
        platform.lifecycle.add_listener(self.kick)

    def irq_line(self, gsi: int) -> IrqLine:
        line = self._lines.get(gsi)
        if line is None:
            line = self._lines[gsi] = CallbackIrqLine(gsi, self._set_gsi)
        return line

    def _set_gsi(self, gsi: int, level: bool) -> None:
        # No interrupt controller is attached yet: lines are recorded but reach no CPU.
        pass

    def load_boot_state(self, state) -> None:
        self.cpu.load_state(state)

    @property
    def instructions(self) -> int:
        return self._retired

    _retired = 0

    def run(self) -> StopRequest:
        lifecycle = self.platform.lifecycle
        cpu = self.cpu
        while lifecycle.pending is None:
            result = cpu.run(SLICE)
            self._retired += result.instructions
            if result.reason == StopReason.SHUTDOWN:
                return lifecycle.pending or Reset(result.detail or "triple fault")
            if result.reason == StopReason.HLT:
                self._wakeup.wait(IDLE_WAIT_S)
                self._wakeup.clear()
        return lifecycle.pending

    def kick(self) -> None:
        self.cpu.kick()
        self._wakeup.set()

    def close(self) -> None:
        self.platform.lifecycle.remove_listener(self.kick)

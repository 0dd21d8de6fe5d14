"""The software-CPU accelerator: the Cpu, pyhv's own interrupt controllers and timers, and a
run loop in slices that fires timers between them and sleeps while the guest halts.

Under KVM the kernel provides the PIC, PIT, IOAPIC and local APIC; here :class:`SoftIrqChip`
attaches Python ones on the same buses, so the devices and the guest see the same PC.
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, Optional

from ...clock import HostClock, TimerQueue
from ...devices.irq_router import SoftIrqChip
from ...errors import AccelError
from ...irq import IrqLine
from ...lifecycle import Reset, StopRequest
from ..base import PauseGate, Platform
from .cpu import Cpu, StopReason

# Instructions per slice: timers fire and other threads' requests are seen between slices.
SLICE = 10_000


class TcgAccelerator:
    name = "tcg"

    def __init__(self, platform: Platform) -> None:
        if platform.cpu_model is None:
            raise AccelError("-cpu host needs KVM; the software CPU implements -cpu pyhv64")
        self.platform = platform
        self.clock = HostClock()
        self.timers = TimerQueue()
        self.chip = SoftIrqChip(self.clock, self.timers, platform.pio, platform.mmio)
        cpu = self.cpu = Cpu(platform.memory, platform.pio, platform.mmio, platform.lifecycle,
                             platform.cpu_model)
        cpu.lapic = self.chip.lapic
        cpu.tsc = self.chip.tsc
        cpu.acknowledge_interrupt = self.chip.source.acknowledge
        self._wakeup = threading.Event()
        self.chip.source.on_raise = self._interrupt_raised
        self.instructions = 0
        self.pause_gate = PauseGate()
        platform.lifecycle.add_listener(self.kick)

    def _interrupt_raised(self) -> None:
        # May run on a device thread (serial input): only set flags and wake the loop.
        self.cpu.interrupt_request = True
        self.cpu.kick()
        self._wakeup.set()

    def irq_line(self, gsi: int) -> IrqLine:
        return self.chip.irq_line(gsi)

    def load_boot_state(self, state) -> None:
        self.cpu.load_state(state)

    def run(self) -> StopRequest:
        lifecycle = self.platform.lifecycle
        cpu, clock, timers, source = self.cpu, self.clock, self.timers, self.chip.source
        wakeup = self._wakeup
        gate = self.pause_gate
        while lifecycle.pending is None:
            if gate.requested:
                gate.park(lifecycle)
                continue
            if source.pending:
                cpu.interrupt_request = True
            result = cpu.run(SLICE)
            self.instructions += result.instructions
            reason = result.reason
            if reason == StopReason.SHUTDOWN:
                return lifecycle.pending or Reset(result.detail or "triple fault")
            if reason == StopReason.HLT and not source.pending:
                deadline = timers.next_deadline()
                clock.idle(deadline if deadline is not None else clock.now_ns() + 50_000_000, wakeup)
                wakeup.clear()
            timers.run_expired(clock.now_ns())
        return lifecycle.pending

    def kick(self) -> None:
        self.cpu.kick()
        self._wakeup.set()
        self.pause_gate.wake()

    def msi_sink(self):
        """Where PCI devices send MSIs: pyhv's APIC bus, to the local APIC."""
        from ...devices.pci.sinks import ApicBusMsiSink

        return ApicBusMsiSink(self.chip.apic_bus)

    def doorbell(self, addr: int, length: int, datamatch: Optional[int], fd: int) -> Optional[Callable[[], None]]:
        """No doorbells here: the software CPU's MMIO writes reach the transport, which
        signals the I/O thread itself (an exit costs nothing extra on this CPU)."""
        return None

    def registers(self) -> Dict[str, int]:
        """The CPU's registers by name, for the monitor (call while paused)."""
        state = self.cpu.registers()
        values = {name: value for name, value in state.items() if isinstance(value, int)}
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            values[name] = state[name]["selector"]
        values["gdt_base"], values["gdt_limit"] = state["gdt"]
        values["idt_base"], values["idt_limit"] = state["idt"]
        return values

    def close(self) -> None:
        self.platform.lifecycle.remove_listener(self.kick)

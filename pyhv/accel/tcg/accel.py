"""The software-CPU accelerator: the Cpu, pyhv's own interrupt controllers and timers, and a
run loop in slices that fires timers between them and sleeps while the guest halts.

Under KVM the kernel provides the PIC, PIT, IOAPIC and local APIC; here :class:`SoftIrqChip`
attaches Python ones on the same buses, so the devices and the guest see the same PC.

Time. By default the guest's clock counts instructions (QEMU's ``-icount``): a CPU that runs a
few million instructions per second on host time loses timer ticks, and Linux then calls its
TSC unstable and fails to calibrate against the PIT. With the instruction clock a slice never
runs past the next timer deadline, and every port or MMIO access ends the slice so the device
sees the time of the access to within the instructions since the previous one (the PIT
polling loops that calibrate the TSC need that). ``-icount sleep=on`` (the default) makes a
halted guest wait in real time for its next timer, so ``sleep 1`` in the guest takes a second.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Optional

from ...clock import NEVER, HostClock, InstructionClock, TimerQueue
from ...devices.irq_router import SoftIrqChip
from ...errors import AccelError
from ...irq import IrqLine
from ...lifecycle import Reset, StopRequest
from ..base import PauseGate, Platform
from .codecache import CodeCache, code_cache_path
from .compiler import CompileHelper, helper_wanted
from .cpu import Cpu, StopReason
from .hints import WARM_RUNS, BlockHints

# Instructions per slice: timers fire and other threads' requests are seen between slices.
SLICE = 10_000
# How long a halted guest with no timer armed waits before the loop looks again.
IDLE_POLL_NS = 50_000_000


class _SliceEndingBus:
    """A bus as the CPU sees it under the instruction clock: each access ends the slice, so
    the clock catches up before the next one (the device saw the time of the slice's start,
    which the previous access ended)."""

    def __init__(self, bus, accel: "TcgAccelerator") -> None:
        self._bus = bus
        self._accel = accel

    def _end_slice(self) -> None:
        cpu = self._accel.cpu
        cpu.exit_request = True
        cpu.break_block = True

    def read(self, addr: int, size: int) -> int:
        value = self._bus.read(addr, size)
        self._end_slice()
        return value

    def write(self, addr: int, size: int, value: int) -> None:
        self._bus.write(addr, size, value)
        self._end_slice()

    def __getattr__(self, name: str):
        return getattr(self._bus, name)


class TcgAccelerator:
    name = "tcg"

    def __init__(self, platform: Platform) -> None:
        if platform.cpu_model is None:
            raise AccelError("-cpu host needs KVM; the software CPU implements -cpu pyhv64")
        self.platform = platform
        pio, mmio = platform.pio, platform.mmio
        if platform.icount_shift is None:
            self.clock = HostClock()
        else:
            self.clock = InstructionClock(ns_per_insn=1 << platform.icount_shift)
            pio, mmio = _SliceEndingBus(pio, self), _SliceEndingBus(mmio, self)
        self.timers = TimerQueue()
        self.chip = SoftIrqChip(self.clock, self.timers, platform.pio, platform.mmio)
        cpu = self.cpu = Cpu(platform.memory, pio, mmio, platform.lifecycle, platform.cpu_model)
        cpu.lapic = self.chip.lapic
        cpu.tsc = self.chip.tsc
        cpu.acknowledge_interrupt = self.chip.source.acknowledge
        if platform.tcg_hints is not None and (cpu.translate_after or 0) > WARM_RUNS:
            # (CPython translates a block after 32 runs: a head start has nothing to win there.)
            cpu.hints = BlockHints(platform.tcg_hints)
        if platform.tcg_hints is not None:
            cpu.translator.code_cache = CodeCache(code_cache_path(platform.tcg_hints))
        # -icount sleep=off asks for a run that repeats exactly (see .compiler).
        reproducible = platform.icount_shift is not None and not platform.icount_sleep
        if helper_wanted(cpu.translate_after, reproducible):
            # Its code comes from the cache where an earlier boot compiled it; an empty or
            # unreadable cache file is not worth its reading.
            cache = cpu.translator.code_cache
            helper = CompileHelper(cache.path if cache is not None and cache.previous else None)
            helper.start()  # it imports pyhv while the guest's first blocks warm up
            cpu.translator.helper = helper
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
        counting = isinstance(clock, InstructionClock)
        ns_per_insn = clock.ns_per_insn if counting else 1
        gate = self.pause_gate
        while lifecycle.pending is None:
            if gate.requested:
                gate.park(lifecycle)
                continue
            if source.pending:
                cpu.interrupt_request = True
            budget = SLICE
            if counting and timers.earliest != NEVER:
                # On the instruction clock a slice ends at the next timer (up to one block
                # later: a timer that fires a few instructions late is not seen by a guest).
                budget = min(SLICE, max(1, (timers.earliest - clock.now) // ns_per_insn))
            result = cpu.run(budget, whole_blocks=True)
            self.instructions += result.instructions
            if counting:
                clock.advance(result.instructions)
            reason = result.reason
            if reason == StopReason.SHUTDOWN:
                return lifecycle.pending or Reset(result.detail or "triple fault")
            if reason == StopReason.HLT and not source.pending:
                self._idle()
            timers.run_expired(clock.now_ns())
        return lifecycle.pending

    def _idle(self) -> None:
        """A halted guest waits for its next timer or an interrupt from a device thread."""
        clock, deadline, wakeup = self.clock, self.timers.earliest, self._wakeup
        if isinstance(clock, InstructionClock):
            self._idle_on_instruction_clock(clock, deadline, self.platform.icount_sleep, wakeup)
        else:
            clock.idle(deadline if deadline != NEVER else clock.now_ns() + IDLE_POLL_NS, wakeup)
            wakeup.clear()

    @staticmethod
    def _idle_on_instruction_clock(clock: InstructionClock, deadline: int, sleep: bool,
                                   wakeup: threading.Event) -> None:
        """A halted guest: jump virtual time to the next timer, waiting for it in real time
        first when ``sleep`` (an interrupt from a device thread ends the wait early, and
        virtual time then moves only as far as real time did)."""
        if not sleep:
            if deadline == NEVER:
                wakeup.wait()
                wakeup.clear()
            else:
                clock.warp_to(deadline)
            return
        start = time.monotonic_ns()
        wait_ns = IDLE_POLL_NS if deadline == NEVER else deadline - clock.now
        if wait_ns > 0 and not wakeup.wait(wait_ns / 1e9):
            clock.warp_to(clock.now + wait_ns)
        else:
            clock.warp_to(min(deadline, clock.now + (time.monotonic_ns() - start)))
        wakeup.clear()

    def kick(self) -> None:
        self.cpu.kick()
        self._wakeup.set()
        self.pause_gate.wake()

    def clock_ns(self) -> int:
        return self.clock.now_ns()

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
        if self.cpu.hints is not None:
            self.cpu.note_warm_blocks()
            self.cpu.hints.save()
        if self.cpu.translator.code_cache is not None:
            self.cpu.translator.code_cache.save()
        if self.cpu.translator.helper is not None:
            self.cpu.translator.helper.close()

"""Interrupt routing for the software CPU: device lines to the PIC and IOAPIC, and the CPU's
single view of pending interrupts.

Wiring (as QEMU's pc machine, and as the MADT built for it says)::

    ISA IRQ n (0-15) --+--> 8259 pair, input n (2 is the cascade and takes no device)
                       +--> IOAPIC pin n, except IRQ 0 -> pin 2 (interrupt source override)
    GSI 16-23 ----------> IOAPIC pin 16-23 (PCI INTx)
    PIC INTR -----------> local APIC LINT0 (ExtINT in virtual-wire mode), or straight to the
                          CPU while the local APIC is globally disabled
    IOAPIC, MSI, IPIs --> local APIC IRR via the APIC bus

The interface the software CPU uses (:class:`InterruptSource`)::

    source.pending        bool attribute, cheap to test once per block: an external
                          interrupt is waiting (the CPU still checks RFLAGS.IF and the
                          interrupt shadow itself)
    source.acknowledge()  the INTA cycle: returns the vector to deliver through the IDT and
                          moves it in service, or None if the request went away meanwhile
    source.on_raise       callable the CPU sets; called (from any thread) when ``pending``
                          becomes true, e.g. to set its interrupt flag and leave HLT
    source.nmi_pending    bool attribute; ``source.take_nmi()`` consumes one NMI
    source.lapic          the local APIC, for ``read_msr`` / ``write_msr`` (MSRs 0x1B,
                          0x6E0, 0x800-0x8FF; :class:`~pyhv.devices.lapic.ApicMsrFault`
                          means #GP(0))

:class:`SoftIrqChip` builds and attaches the whole set (PIC, PIT, port 0x61, IOAPIC, local
APIC) on the machine's buses; ``chip.irq_line(gsi)`` is what the accelerator's ``irq_line``
returns to devices. The run loop that drives it (tests/devices/test_hlt_timer_tcg.py runs
tests/guests/hlt_timer.S this way)::

    cpu.acknowledge_interrupt = chip.source.acknowledge
    chip.source.on_raise = lambda: (setattr(cpu, "interrupt_request", True), cpu.kick())
    while lifecycle.pending is None:
        result = cpu.run(max(1, timers.earliest - clock.now_ns()))  # InstructionClock: ns = insns
        clock.advance(result.instructions)           # InstructionClock only
        if result.reason == StopReason.HLT:
            clock.idle(timers.earliest, wake_event)  # warp (icount) or sleep (host time)
        timers.run_expired(clock.now_ns())

Devices on other threads (serial input) may raise lines at any time; ``on_raise`` then runs
on that thread, so it must only set flags and kick.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from ..bus import Bus
from ..clock import Clock, TimerQueue, Tsc
from ..errors import ConfigError
from ..irq import CallbackIrqLine, IrqLine
from .apic_bus import DELIVERY_NMI, ApicBus
from .ioapic import IOAPIC_BASE, IOAPIC_PINS, IOAPIC_SIZE, IoApic
from .lapic import LAPIC_BASE, LAPIC_SIZE, LocalApic
from .pic import CASCADE_IRQ, PicPair
from .pit import Pit

ISA_IRQS = 16
PIT_IRQ = 0
PIT_IOAPIC_PIN = 2  # the MADT's interrupt source override: ISA IRQ 0 -> GSI 2


class IrqRoutingError(ConfigError):
    """A device asked for an interrupt line the board does not have."""


class IrqRouter:
    """Routes GSIs (ISA IRQs 0-15, PCI GSIs 16-23) to the PIC and the IOAPIC."""

    def __init__(self, pic: Optional[PicPair], ioapic: Optional[IoApic]) -> None:
        self.pic = pic
        self.ioapic = ioapic
        self._lines: Dict[int, CallbackIrqLine] = {}

    def set_gsi(self, gsi: int, level: bool) -> None:
        if not 0 <= gsi < IOAPIC_PINS:
            raise IrqRoutingError(f"interrupt line {gsi} does not exist (GSIs 0-{IOAPIC_PINS - 1})")
        if gsi < ISA_IRQS:
            if self.pic is not None:
                self.pic.set_irq(gsi, level)
            if self.ioapic is not None and gsi != CASCADE_IRQ:
                self.ioapic.set_irq(PIT_IOAPIC_PIN if gsi == PIT_IRQ else gsi, level)
        elif self.ioapic is not None:
            self.ioapic.set_irq(gsi, level)

    def irq_line(self, gsi: int) -> IrqLine:
        """The line a device drives to raise ``gsi`` (one shared object per GSI)."""
        if not 0 <= gsi < IOAPIC_PINS:
            raise IrqRoutingError(f"interrupt line {gsi} does not exist (GSIs 0-{IOAPIC_PINS - 1})")
        if gsi == CASCADE_IRQ:
            raise IrqRoutingError("ISA IRQ 2 is the 8259 cascade and cannot be given to a device")
        line = self._lines.get(gsi)
        if line is None:
            line = self._lines[gsi] = CallbackIrqLine(gsi, self.set_gsi)
        return line


class InterruptSource:
    """What the CPU sees: one INTR (local APIC or PIC through ExtINT) and NMI."""

    def __init__(self, pic: PicPair, lapic: Optional[LocalApic] = None) -> None:
        self.pic = pic
        self.lapic = lapic
        self.pending = False
        self.nmi_pending = False
        self._direct_nmis = 0
        self.on_raise: Callable[[], None] = lambda: None
        pic.on_output = self._pic_output
        if lapic is not None:
            lapic.on_change = self.update

    def _pic_output(self, level: bool) -> None:
        if self.lapic is not None:
            self.lapic.set_lint(0, level)
        self.update()

    def update(self) -> None:
        """Recompute ``pending`` and ``nmi_pending``; call ``on_raise`` on a new request."""
        lapic = self.lapic
        pic_output = self.pic.output
        if lapic is None or not lapic.hardware_enabled:
            pending = pic_output
        else:
            pending = lapic.deliverable or (pic_output and lapic.accepts_extint())
        nmi = self._direct_nmis > 0 or (lapic is not None and lapic.nmi_pending > 0)
        raised = (pending and not self.pending) or (nmi and not self.nmi_pending)
        self.pending = pending
        self.nmi_pending = nmi
        if raised:
            self.on_raise()

    def acknowledge(self) -> Optional[int]:
        lapic = self.lapic
        vector: Optional[int] = None
        if lapic is not None and lapic.hardware_enabled:
            vector = lapic.acknowledge()
            if vector is None and self.pic.output and lapic.accepts_extint():
                lapic.extint_requested = False
                vector = self.pic.acknowledge()
        elif self.pic.output:
            vector = self.pic.acknowledge()
        self.update()
        return vector

    def raise_nmi(self) -> None:
        """An NMI for the CPU (QMP inject-nmi, a watchdog): through the local APIC if enabled."""
        if self.lapic is not None and self.lapic.hardware_enabled:
            self.lapic.receive(DELIVERY_NMI, 0, False)
        else:
            self._direct_nmis += 1
            self.update()

    def take_nmi(self) -> bool:
        """Consume one pending NMI; False if there was none."""
        if self._direct_nmis:
            self._direct_nmis -= 1
        elif self.lapic is not None and self.lapic.nmi_pending:
            self.lapic.nmi_pending -= 1
        else:
            return False
        self.update()
        return True


class SoftIrqChip:
    """The PC's interrupt controllers and timers, in Python, attached to the machine's buses."""

    def __init__(self, clock: Clock, timers: TimerQueue, pio: Bus, mmio: Bus, tsc: Optional[Tsc] = None) -> None:
        self.clock = clock
        self.timers = timers
        self.tsc = tsc if tsc is not None else Tsc(clock)
        self.apic_bus = ApicBus()
        self.pic = PicPair()
        self.ioapic = IoApic(self.apic_bus)
        self.lapic = LocalApic(0, clock, timers, self.tsc, self.apic_bus, bsp=True)
        self.router = IrqRouter(self.pic, self.ioapic)
        self.source = InterruptSource(self.pic, self.lapic)
        self.pit = Pit(clock, timers, self.router.irq_line(PIT_IRQ))
        self.pic.attach(pio)
        self.pit.attach(pio)
        mmio.attach(IOAPIC_BASE, IOAPIC_SIZE, self.ioapic)
        mmio.attach(LAPIC_BASE, LAPIC_SIZE, self.lapic)

    def irq_line(self, gsi: int) -> IrqLine:
        return self.router.irq_line(gsi)

    def reset(self) -> None:
        """Machine reset: every controller and timer back to its power-up state."""
        self.pic.reset()
        self.ioapic.reset()
        self.lapic.reset()
        self.pit.reset()
        self.source.update()

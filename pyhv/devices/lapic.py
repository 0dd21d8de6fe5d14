"""The local APIC: xAPIC registers at 0xFEE00000, x2APIC MSRs 0x800-0x8FF, the APIC base MSR.

State follows the Intel SDM, volume 3, chapter 11 (version 0x14 with 6 LVT entries: timer,
thermal, performance counters, LINT0, LINT1, error). Interrupts wait in IRR; the CPU takes
the highest one whose priority class beats the processor priority (PPR, from TPR and the
highest in-service vector), moving it to ISR; an EOI retires the highest ISR vector and,
when TMR marks it level-triggered, is broadcast to the IOAPICs.

The CPU reaches the MSRs through :meth:`LocalApic.read_msr` / :meth:`write_msr` (indices
0x1B, 0x6E0 and 0x800-0x8FF, see :meth:`handles_msr`); an access the SDM says faults
raises :class:`ApicMsrFault`, which the CPU must turn into #GP(0).

After reset, the bootstrap processor's LINT0 is unmasked in ExtINT mode (virtual wire, as
firmware leaves it and as KVM resets it), so a guest that never touches the APIC gets its
8259 interrupts. With the APIC globally disabled (APIC base bit 11 clear) the PIC's output
reaches the CPU directly; :mod:`pyhv.devices.irq_router` does that wiring.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from ..clock import Clock, TimerQueue, Tsc
from .apic_bus import (DELIVERY_EXTINT, DELIVERY_FIXED, DELIVERY_INIT, DELIVERY_LOWEST_PRIORITY,
                       DELIVERY_NMI, DELIVERY_STARTUP, X2APIC_BROADCAST, XAPIC_BROADCAST, ApicBus)
from .lapic_timer import MODE_TSC_DEADLINE, ApicTimer

LAPIC_BASE = 0xFEE0_0000
LAPIC_SIZE = 0x1000

MSR_APIC_BASE = 0x1B
MSR_TSC_DEADLINE = 0x6E0
MSR_X2APIC_FIRST = 0x800
MSR_X2APIC_LAST = 0x8FF

BASE_BSP = 1 << 8
BASE_X2APIC = 1 << 10
BASE_ENABLE = 1 << 11
BASE_ADDRESS_MASK = 0xFF_FFFF_F000  # 40 physical address bits, as CPUID 0x80000008 says
BASE_WRITABLE = BASE_ADDRESS_MASK | BASE_X2APIC | BASE_ENABLE

VERSION = 0x0005_0014  # version 0x14, max LVT entry 5

# Register offsets (xAPIC MMIO; the x2APIC MSR is 0x800 + offset / 16).
REG_ID = 0x20
REG_VERSION = 0x30
REG_TPR = 0x80
REG_APR = 0x90
REG_PPR = 0xA0
REG_EOI = 0xB0
REG_RRD = 0xC0
REG_LDR = 0xD0
REG_DFR = 0xE0
REG_SVR = 0xF0
REG_ISR = 0x100
REG_TMR = 0x180
REG_IRR = 0x200
REG_ESR = 0x280
REG_ICR_LOW = 0x300
REG_ICR_HIGH = 0x310
REG_LVT_TIMER = 0x320
REG_LVT_ERROR = 0x370
REG_TIMER_INITIAL = 0x380
REG_TIMER_CURRENT = 0x390
REG_TIMER_DIVIDE = 0x3E0
REG_SELF_IPI = 0x3F0  # x2APIC only

LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = range(6)
LVT_COUNT = 6
LVT_MASKED = 1 << 16
LVT_LEVEL_TRIGGER = 1 << 15
LVT_REMOTE_IRR = 1 << 14
LVT_WRITABLE = (0x700FF, 0x107FF, 0x107FF, 0x1A7FF, 0x1A7FF, 0x100FF)
LVT_VIRTUAL_WIRE = DELIVERY_EXTINT << 8

SVR_ENABLE = 1 << 8
SVR_WRITABLE = 0x1FF  # vector and software enable; no EOI-broadcast suppression
DFR_FLAT = 0xFFFF_FFFF

ICR_LOGICAL = 1 << 11
ICR_LEVEL_ASSERT = 1 << 14
ICR_LEVEL_TRIGGER = 1 << 15
ICR_WRITABLE_LOW = 0xCCFFF  # vector, delivery and destination modes, level, trigger, shorthand
SHORTHAND_NONE, SHORTHAND_SELF, SHORTHAND_ALL, SHORTHAND_OTHERS = range(4)

ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECEIVE_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

_READ_ONLY_MSRS = frozenset(0x800 + (r >> 4) for r in (REG_ID, REG_VERSION, REG_PPR, REG_LDR, REG_TIMER_CURRENT))
_X2APIC_ABSENT = frozenset(0x800 + (r >> 4) for r in (REG_APR, REG_RRD, REG_DFR, REG_ICR_HIGH))


class ApicMsrFault(Exception):
    """A guest MSR access the APIC refuses; the CPU raises #GP(0). Not a host error."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(f"MSR {index:#x}: {why}")
        self.index = index


class LocalApic:
    """One vCPU's local APIC.

    ``on_change()`` is called whenever what the CPU could take may have changed (IRR, ISR,
    TPR, enables, LINT0); ``deliverable`` and :meth:`acknowledge` answer for vectors in IRR,
    :meth:`accepts_extint` for the PIC behind LINT0. NMI, INIT and SIPI raise counters and
    flags the CPU consumes.
    """

    def __init__(self, apic_id: int, clock: Clock, timers: TimerQueue, tsc: Tsc,
                 bus: Optional[ApicBus] = None, bsp: bool = True) -> None:
        self.initial_id = apic_id
        self.bus = bus
        self.bsp = bsp
        self.on_change: Callable[[], None] = lambda: None
        self.timer = ApicTimer(clock, timers, tsc, self._timer_fired)
        self.nmi_pending = 0
        self.init_pending = False
        self.sipi_vector: Optional[int] = None
        self.extint_requested = False  # an ExtINT message arrived (IOAPIC virtual wire)
        self.lint_levels = [False, False]
        self.base = LAPIC_BASE | BASE_ENABLE | (BASE_BSP if bsp else 0)
        self._reset_registers(virtual_wire=bsp)
        if bus is not None:
            bus.add_lapic(self)

    def _reset_registers(self, virtual_wire: bool) -> None:
        self.id = self.initial_id
        self.tpr = 0
        self.ldr = 0
        self.dfr = DFR_FLAT
        self.svr = 0xFF
        self.irr = 0
        self.isr = 0
        self.tmr = 0
        self.esr = 0
        self.esr_pending = 0
        self.icr = 0
        self.lvt: List[int] = [LVT_MASKED] * LVT_COUNT
        if virtual_wire:
            self.lvt[LVT_LINT0] = LVT_VIRTUAL_WIRE
        self.timer.reset()
        self.deliverable = False
        self.extint_requested = False

    # --- state ----------------------------------------------------------------------------
    @property
    def hardware_enabled(self) -> bool:
        return bool(self.base & BASE_ENABLE)

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    @property
    def x2apic(self) -> bool:
        return bool(self.base & BASE_X2APIC)

    def ppr(self) -> int:
        isrv = self.isr.bit_length() - 1
        if isrv >= 0 and (isrv & 0xF0) > (self.tpr & 0xF0):
            return isrv & 0xF0
        return self.tpr & 0xFF

    def highest_irr(self) -> int:
        return self.irr.bit_length() - 1

    def _update(self) -> None:
        irrv = self.irr.bit_length() - 1
        self.deliverable = (irrv >= 0 and self.hardware_enabled and self.software_enabled
                            and (irrv & 0xF0) > (self.ppr() & 0xF0))
        self.on_change()

    def accepts_extint(self) -> bool:
        """Whether the PIC's INTR reaches the CPU through this APIC now."""
        if not self.hardware_enabled:
            return True
        lint0 = self.lvt[LVT_LINT0]
        return self.extint_requested or (not lint0 & LVT_MASKED and (lint0 >> 8) & 7 == DELIVERY_EXTINT)

    def acknowledge(self) -> Optional[int]:
        """The CPU takes the highest deliverable IRR vector (IRR -> ISR), or None."""
        if not self.deliverable:
            return None
        vector = self.irr.bit_length() - 1
        bit = 1 << vector
        self.irr &= ~bit
        self.isr |= bit
        self._update()
        return vector

    def spurious_vector(self) -> int:
        return self.svr & 0xFF

    # --- receiving ------------------------------------------------------------------------
    def _set_irr(self, vector: int, level_triggered: bool) -> None:
        if vector < 16:
            self._error(ESR_RECEIVE_ILLEGAL_VECTOR)
            return
        bit = 1 << vector
        self.irr |= bit
        if level_triggered:
            self.tmr |= bit
        else:
            self.tmr &= ~bit
        self._update()

    def receive(self, delivery_mode: int, vector: int, level_triggered: bool) -> None:
        """An interrupt message from the APIC bus (IOAPIC, MSI, IPI) or a local source."""
        if not self.hardware_enabled:
            return
        if delivery_mode in (DELIVERY_FIXED, DELIVERY_LOWEST_PRIORITY):
            if self.software_enabled:
                self._set_irr(vector, level_triggered)
        elif delivery_mode == DELIVERY_NMI:
            self.nmi_pending += 1
            self.on_change()
        elif delivery_mode == DELIVERY_INIT:
            self.init_pending = True
            self.on_change()
        elif delivery_mode == DELIVERY_STARTUP:
            self.sipi_vector = vector
            self.on_change()
        elif delivery_mode == DELIVERY_EXTINT:
            self.extint_requested = True
            self.on_change()

    def _local(self, index: int) -> None:
        """Deliver LVT entry ``index`` (timer, LINT, error) if it is not masked."""
        entry = self.lvt[index]
        if entry & LVT_MASKED:
            return
        mode = (entry >> 8) & 7
        if index == LVT_TIMER or index == LVT_ERROR:
            mode = DELIVERY_FIXED
        if mode == DELIVERY_EXTINT:
            self.on_change()
            return
        level = bool(entry & LVT_LEVEL_TRIGGER) and index in (LVT_LINT0, LVT_LINT1) and mode == DELIVERY_FIXED
        self.receive(mode, entry & 0xFF, level)

    def set_lint(self, pin: int, level: bool) -> None:
        """Drive the LINT0 (0) or LINT1 (1) input; a rising edge delivers its LVT entry."""
        level = bool(level)
        previous = self.lint_levels[pin]
        self.lint_levels[pin] = level
        if level and not previous:
            self._local(LVT_LINT0 + pin)

    def _timer_fired(self) -> None:
        self._local(LVT_TIMER)

    def _error(self, bits: int) -> None:
        self.esr_pending |= bits
        self._local(LVT_ERROR)

    # --- EOI and IPIs ---------------------------------------------------------------------
    def eoi(self) -> None:
        vector = self.isr.bit_length() - 1
        if vector < 0:
            return
        bit = 1 << vector
        self.isr &= ~bit
        if self.tmr & bit and self.bus is not None:
            self.bus.broadcast_eoi(vector)
        self._update()

    def _send_ipi(self, icr: int) -> None:
        vector = icr & 0xFF
        mode = (icr >> 8) & 7
        if mode == DELIVERY_INIT and not icr & ICR_LEVEL_ASSERT:
            return  # INIT level de-assert: a no-op since the Pentium 4
        if mode in (DELIVERY_FIXED, DELIVERY_LOWEST_PRIORITY) and vector < 16:
            self._error(ESR_SEND_ILLEGAL_VECTOR)
            return
        level = bool(icr & ICR_LEVEL_TRIGGER) and mode == DELIVERY_FIXED
        shorthand = (icr >> 18) & 3
        if shorthand == SHORTHAND_SELF:
            self.receive(mode, vector, level)
            return
        if self.bus is None:
            if shorthand == SHORTHAND_ALL or self.matches(self._icr_destination(icr), bool(icr & ICR_LOGICAL)):
                self.receive(mode, vector, level)
            return
        if shorthand == SHORTHAND_NONE:
            self.bus.deliver(self._icr_destination(icr), bool(icr & ICR_LOGICAL), mode, vector, level)
            return
        for lapic in list(self.bus.lapics):
            if shorthand == SHORTHAND_ALL or lapic is not self:
                lapic.receive(mode, vector, level)

    def _icr_destination(self, icr: int) -> int:
        return (icr >> 32) & 0xFFFF_FFFF if self.x2apic else (icr >> 56) & 0xFF

    def matches(self, dest: int, logical: bool) -> bool:
        """Whether a message for ``dest`` (physical or logical) addresses this APIC."""
        if not self.hardware_enabled:
            return False
        if not logical:
            if self.x2apic:
                return dest in (self.id, X2APIC_BROADCAST) or (dest == XAPIC_BROADCAST)
            return dest in (self.id & 0xFF, XAPIC_BROADCAST)
        if self.x2apic:
            ldr = self.x2apic_ldr()
            return (dest >> 16) == (ldr >> 16) and bool(dest & ldr & 0xFFFF) or dest == X2APIC_BROADCAST
        if dest == XAPIC_BROADCAST:
            return True
        logical_id = self.ldr >> 24
        if (self.dfr >> 28) == 0xF:  # flat model
            return bool(logical_id & dest)
        return (logical_id >> 4) == (dest >> 4) and bool(logical_id & dest & 0xF)  # cluster model

    def arbitration_priority(self) -> int:
        return self.tpr & 0xF0

    def x2apic_ldr(self) -> int:
        return ((self.id >> 4) << 16) | (1 << (self.id & 0xF))

    # --- registers, shared by xAPIC and x2APIC --------------------------------------------
    def read_register(self, reg: int) -> Optional[int]:
        """The 32-bit register at xAPIC offset ``reg``, or None for a reserved offset."""
        if REG_ISR <= reg < REG_ISR + 0x80:
            return (self.isr >> (32 * ((reg - REG_ISR) >> 4))) & 0xFFFF_FFFF
        if REG_TMR <= reg < REG_TMR + 0x80:
            return (self.tmr >> (32 * ((reg - REG_TMR) >> 4))) & 0xFFFF_FFFF
        if REG_IRR <= reg < REG_IRR + 0x80:
            return (self.irr >> (32 * ((reg - REG_IRR) >> 4))) & 0xFFFF_FFFF
        if REG_LVT_TIMER <= reg <= REG_LVT_ERROR:
            return self.lvt[(reg - REG_LVT_TIMER) >> 4]
        if reg == REG_ID:
            return self.id if self.x2apic else (self.id & 0xFF) << 24
        if reg == REG_VERSION:
            return VERSION
        if reg == REG_TPR:
            return self.tpr
        if reg == REG_APR:
            return 0
        if reg == REG_PPR:
            return self.ppr()
        if reg == REG_LDR:
            return self.x2apic_ldr() if self.x2apic else self.ldr
        if reg == REG_DFR:
            return self.dfr
        if reg == REG_SVR:
            return self.svr
        if reg == REG_ESR:
            return self.esr
        if reg == REG_ICR_LOW:
            return self.icr & 0xFFFF_FFFF
        if reg == REG_ICR_HIGH:
            return self.icr >> 32
        if reg == REG_TIMER_INITIAL:
            return self.timer.initial_count
        if reg == REG_TIMER_CURRENT:
            return self.timer.current_count()
        if reg == REG_TIMER_DIVIDE:
            return self.timer.divide_config
        if reg in (REG_EOI, REG_RRD):
            return 0
        return None

    def write_register(self, reg: int, value: int) -> bool:
        """Write the register at xAPIC offset ``reg``; False for a read-only or reserved one."""
        if REG_LVT_TIMER <= reg <= REG_LVT_ERROR:
            self._write_lvt((reg - REG_LVT_TIMER) >> 4, value)
        elif reg == REG_ID:
            self.id = (value >> 24) & 0xFF  # only xAPIC IDs are writable
        elif reg == REG_TPR:
            self.tpr = value & 0xFF
            self._update()
        elif reg == REG_EOI:
            self.eoi()
        elif reg == REG_LDR:
            self.ldr = value & 0xFF00_0000
        elif reg == REG_DFR:
            self.dfr = value | 0x0FFF_FFFF
        elif reg == REG_SVR:
            self._write_svr(value)
        elif reg == REG_ESR:
            self.esr = self.esr_pending
            self.esr_pending = 0
        elif reg == REG_ICR_LOW:
            self.icr = (self.icr & ~0xFFFF_FFFF) | (value & ICR_WRITABLE_LOW)
            self._send_ipi(self.icr)
        elif reg == REG_ICR_HIGH:
            self.icr = (self.icr & 0xFFFF_FFFF) | ((value & 0xFF00_0000) << 32)
        elif reg == REG_TIMER_INITIAL:
            self.timer.write_initial_count(value)
        elif reg == REG_TIMER_DIVIDE:
            self.timer.write_divide_config(value)
        else:
            return False
        return True

    def _write_lvt(self, index: int, value: int) -> None:
        entry = value & LVT_WRITABLE[index]
        if not self.software_enabled:
            entry |= LVT_MASKED
        entry |= self.lvt[index] & LVT_REMOTE_IRR
        self.lvt[index] = entry
        if index == LVT_TIMER:
            self.timer.set_mode((entry >> 17) & 3)
        if index == LVT_LINT0:
            self.on_change()  # ExtINT acceptance may have changed

    def _write_svr(self, value: int) -> None:
        self.svr = value & SVR_WRITABLE
        if not self.software_enabled:
            # Software disable masks every LVT entry, as the SDM requires.
            self.lvt = [entry | LVT_MASKED for entry in self.lvt]
        self._update()

    # --- xAPIC MMIO (bus Device protocol) ------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if self.x2apic or not self.hardware_enabled:
            return (1 << (8 * size)) - 1  # the MMIO page is not decoded
        reg = offset & 0xFF0
        value = self.read_register(reg)
        if value is None:
            self._error(ESR_ILLEGAL_REGISTER)
            return 0
        shift = 8 * (offset & 0xF)
        return (value >> shift) & ((1 << (8 * size)) - 1) if shift < 32 else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if self.x2apic or not self.hardware_enabled:
            return
        if size != 4 or offset & 0xF:
            return  # only aligned 32-bit writes reach the registers, as on KVM
        if not self.write_register(offset, value & 0xFFFF_FFFF):
            if self.read_register(offset) is None:
                self._error(ESR_ILLEGAL_REGISTER)

    # --- MSRs -----------------------------------------------------------------------------
    @staticmethod
    def handles_msr(index: int) -> bool:
        return index in (MSR_APIC_BASE, MSR_TSC_DEADLINE) or MSR_X2APIC_FIRST <= index <= MSR_X2APIC_LAST

    def read_msr(self, index: int) -> int:
        if index == MSR_APIC_BASE:
            return self.base
        if index == MSR_TSC_DEADLINE:
            return self.timer.read_tsc_deadline()
        if not self.x2apic:
            raise ApicMsrFault(index, "x2APIC register read while the APIC is not in x2APIC mode")
        reg = (index - MSR_X2APIC_FIRST) << 4
        if index in _X2APIC_ABSENT or reg in (REG_EOI, REG_SELF_IPI):
            raise ApicMsrFault(index, "not readable in x2APIC mode")
        if reg == REG_ICR_LOW:
            return self.icr
        value = self.read_register(reg)
        if value is None:
            raise ApicMsrFault(index, "no such x2APIC register")
        return value

    def write_msr(self, index: int, value: int) -> None:
        if index == MSR_APIC_BASE:
            self._write_base(value)
            return
        if index == MSR_TSC_DEADLINE:
            self.timer.write_tsc_deadline(value)
            return
        if not self.x2apic:
            raise ApicMsrFault(index, "x2APIC register write while the APIC is not in x2APIC mode")
        reg = (index - MSR_X2APIC_FIRST) << 4
        if index in _X2APIC_ABSENT or index in _READ_ONLY_MSRS or REG_ISR <= reg < REG_IRR + 0x80:
            raise ApicMsrFault(index, "not writable in x2APIC mode")
        if reg == REG_ICR_LOW:
            self.icr = value & (0xFFFF_FFFF_0000_0000 | ICR_WRITABLE_LOW)
            self._send_ipi(self.icr)
        elif reg == REG_SELF_IPI:
            if value & ~0xFF:
                raise ApicMsrFault(index, f"reserved bits set in SELF IPI value {value:#x}")
            self.receive(DELIVERY_FIXED, value, False)
        elif reg in (REG_EOI, REG_ESR) and value:
            raise ApicMsrFault(index, f"only 0 may be written in x2APIC mode, not {value:#x}")
        elif value >> 32 or not self.write_register(reg, value):
            raise ApicMsrFault(index, f"no such writable x2APIC register (value {value:#x})")

    def _write_base(self, value: int) -> None:
        if value & ~(BASE_WRITABLE | BASE_BSP):
            raise ApicMsrFault(MSR_APIC_BASE, f"reserved bits set in {value:#x}")
        enable, x2 = bool(value & BASE_ENABLE), bool(value & BASE_X2APIC)
        if x2 and not enable:
            raise ApicMsrFault(MSR_APIC_BASE, "x2APIC enable without APIC enable is invalid")
        if self.x2apic and self.hardware_enabled and enable and not x2:
            raise ApicMsrFault(MSR_APIC_BASE, "x2APIC to xAPIC needs a disable first")
        if not self.hardware_enabled and x2:
            raise ApicMsrFault(MSR_APIC_BASE, "a disabled APIC must enter xAPIC mode before x2APIC")
        was_enabled, was_x2apic = self.hardware_enabled, self.x2apic
        # The BSP flag is set by hardware at reset; a guest write cannot move it.
        self.base = (value & BASE_WRITABLE) | (self.base & BASE_BSP)
        if was_enabled and not enable:
            self._reset_registers(virtual_wire=False)  # disabling loses all APIC state
        if x2 and not was_x2apic:
            self.id = self.initial_id  # x2APIC mode reports the full, read-only initial ID
        self._update()

    def reset(self) -> None:
        """INIT or machine reset: back to the power-on state, keeping the initial APIC ID."""
        self.base = LAPIC_BASE | BASE_ENABLE | (BASE_BSP if self.bsp else 0)
        self.nmi_pending = 0
        self.init_pending = False
        self.sipi_vector = None
        self._reset_registers(virtual_wire=self.bsp)
        self._update()

    @property
    def timer_mode_tsc_deadline(self) -> bool:
        return self.timer.mode == MODE_TSC_DEADLINE

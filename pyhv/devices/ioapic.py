"""The 82093AA I/O APIC at 0xFEC00000: 24 pins, version 0x11, as on QEMU's pc machine.

The guest selects a register by writing its index to IOREGSEL (offset 0x00) and reads or
writes it through IOWIN (offset 0x10). Registers: 0x00 ID (bits 24-27), 0x01 version
(0x00170011: version 0x11, highest redirection entry 23), 0x02 arbitration ID, and from 0x10
two dwords per pin of the redirection table:

    bits 0-7 vector, 8-10 delivery mode, 11 destination mode (1 = logical), 12 delivery
    status (read-only), 13 polarity (1 = active low), 14 remote IRR (read-only), 15 trigger
    mode (1 = level), 16 mask, 56-63 destination.

An edge-triggered pin sends one message per rising edge while unmasked (an edge while masked
is lost, as the datasheet says). A level-triggered pin sends one while it is asserted and sets
remote IRR; the local APIC's EOI of that vector clears remote IRR and, if the pin is still
asserted, sends again. Pin levels are logical (asserted or not): the board inverts
active-low lines before they reach the pins, so polarity is stored for the guest only.
"""

from __future__ import annotations

from typing import List

from .apic_bus import ApicBus

IOAPIC_BASE = 0xFEC0_0000
IOAPIC_SIZE = 0x1000
IOAPIC_PINS = 24

IOREGSEL_OFFSET = 0x00
IOWIN_OFFSET = 0x10

REG_ID = 0x00
REG_VERSION = 0x01
REG_ARBITRATION = 0x02
REG_REDIRECTION = 0x10

VERSION = ((IOAPIC_PINS - 1) << 16) | 0x11

ENTRY_DELIVERY_STATUS = 1 << 12
ENTRY_POLARITY_LOW = 1 << 13
ENTRY_REMOTE_IRR = 1 << 14
ENTRY_LEVEL = 1 << 15
ENTRY_MASKED = 1 << 16
ENTRY_LOGICAL = 1 << 11
ENTRY_READ_ONLY = ENTRY_DELIVERY_STATUS | ENTRY_REMOTE_IRR
ENTRY_WRITABLE_LOW = 0x1_AFFF  # everything in the low dword but the read-only bits
ENTRY_RESET = ENTRY_MASKED


class IoApic:
    """One IOAPIC delivering to the local APICs on ``bus``; a bus Device for its MMIO window."""

    def __init__(self, bus: ApicBus, ioapic_id: int = 0) -> None:
        self.bus = bus
        self.id = ioapic_id
        self.select = 0
        self.entries: List[int] = [ENTRY_RESET] * IOAPIC_PINS
        self.levels = 0  # asserted pins, one bit each
        bus.add_eoi_listener(self)

    def reset(self) -> None:
        self.select = 0
        self.entries = [ENTRY_RESET] * IOAPIC_PINS
        self.levels = 0

    # --- pins -----------------------------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        """Drive pin ``pin`` (0-23) asserted (True) or not."""
        bit = 1 << pin
        was_asserted = bool(self.levels & bit)
        if level:
            self.levels |= bit
        else:
            self.levels &= ~bit
        entry = self.entries[pin]
        if entry & ENTRY_LEVEL:
            if level:
                self._service(pin)
        elif level and not was_asserted:
            self._send(pin)

    def _send(self, pin: int) -> None:
        entry = self.entries[pin]
        if entry & ENTRY_MASKED:
            return
        level = bool(entry & ENTRY_LEVEL)
        if level:
            self.entries[pin] = entry | ENTRY_REMOTE_IRR
        self.bus.deliver(entry >> 56, bool(entry & ENTRY_LOGICAL), (entry >> 8) & 7, entry & 0xFF, level)

    def _service(self, pin: int) -> None:
        """A level-triggered pin is asserted: deliver unless the last one is still unacknowledged."""
        entry = self.entries[pin]
        if self.levels & (1 << pin) and not entry & (ENTRY_REMOTE_IRR | ENTRY_MASKED):
            self._send(pin)

    def eoi(self, vector: int) -> None:
        """A local APIC retired level-triggered ``vector``: clear remote IRR where it matches."""
        for pin, entry in enumerate(self.entries):
            if entry & ENTRY_REMOTE_IRR and entry & 0xFF == vector and entry & ENTRY_LEVEL:
                self.entries[pin] = entry & ~ENTRY_REMOTE_IRR
                self._service(pin)

    # --- registers ------------------------------------------------------------------------
    def read_register(self, index: int) -> int:
        if index == REG_ID or index == REG_ARBITRATION:
            return (self.id & 0xF) << 24
        if index == REG_VERSION:
            return VERSION
        pin, high = divmod(index - REG_REDIRECTION, 2)
        if index >= REG_REDIRECTION and pin < IOAPIC_PINS:
            entry = self.entries[pin]
            return entry >> 32 if high else entry & 0xFFFF_FFFF
        return 0xFFFF_FFFF  # a reserved index reads as an undriven bus

    def write_register(self, index: int, value: int) -> None:
        if index == REG_ID:
            self.id = (value >> 24) & 0xF
            return
        pin, high = divmod(index - REG_REDIRECTION, 2)
        if index < REG_REDIRECTION or pin >= IOAPIC_PINS:
            return  # version, arbitration and reserved indexes are read-only
        entry = self.entries[pin]
        if high:
            entry = (entry & 0xFFFF_FFFF) | ((value & 0xFF00_0000) << 32)
        else:
            entry = (entry & ~ENTRY_WRITABLE_LOW & ~0xFFFF_FFFF) | (entry & ENTRY_READ_ONLY) | (value & ENTRY_WRITABLE_LOW)
            if not entry & ENTRY_LEVEL:
                entry &= ~ENTRY_REMOTE_IRR  # an edge-triggered pin has no remote IRR
        self.entries[pin] = entry
        if entry & ENTRY_LEVEL:
            self._service(pin)  # unmasking an asserted level pin delivers it

    # --- bus Device protocol --------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == IOREGSEL_OFFSET:
            return self.select
        if IOWIN_OFFSET <= offset < IOWIN_OFFSET + 4:
            value = self.read_register(self.select)
            return (value >> (8 * (offset - IOWIN_OFFSET))) & ((1 << (8 * size)) - 1)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL_OFFSET:
            self.select = value & 0xFF
        elif offset == IOWIN_OFFSET:
            self.write_register(self.select, value & 0xFFFF_FFFF)

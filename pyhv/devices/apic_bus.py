"""The APIC bus: interrupt messages between IOAPICs, MSIs and local APICs.

An interrupt message names a destination (an APIC ID in physical mode, a logical set in
logical mode), a delivery mode and a vector. :meth:`ApicBus.deliver` finds the local APICs
it addresses and hands it to them; :meth:`ApicBus.broadcast_eoi` carries a local APIC's EOI
of a level-triggered vector back to every IOAPIC, which clears the pin's remote IRR.
:meth:`ApicBus.deliver_msi` decodes a PCI MSI write (address 0xFEExxxxx, data) into a
message, so virtio-pci's MSI-X can use the same path.
"""

from __future__ import annotations

from typing import List

from typing import Protocol

# Delivery modes (ICR, LVT and IOAPIC redirection entries use the same encoding).
DELIVERY_FIXED = 0
DELIVERY_LOWEST_PRIORITY = 1
DELIVERY_SMI = 2
DELIVERY_NMI = 4
DELIVERY_INIT = 5
DELIVERY_STARTUP = 6
DELIVERY_EXTINT = 7

XAPIC_BROADCAST = 0xFF
X2APIC_BROADCAST = 0xFFFF_FFFF

MSI_ADDRESS_BASE = 0xFEE0_0000
MSI_ADDRESS_MASK = 0xFFF0_0000
MSI_DEST_SHIFT = 12
MSI_DEST_MODE_LOGICAL = 1 << 2
MSI_DATA_LEVEL_TRIGGER = 1 << 15


class ApicTarget(Protocol):
    """What the bus needs of a local APIC."""

    def matches(self, dest: int, logical: bool) -> bool: ...

    def arbitration_priority(self) -> int: ...

    def receive(self, delivery_mode: int, vector: int, level_triggered: bool) -> None: ...


class EoiListener(Protocol):
    def eoi(self, vector: int) -> None: ...


class ApicBus:
    """Every local APIC and IOAPIC of one VM."""

    def __init__(self) -> None:
        self.lapics: List[ApicTarget] = []
        self.eoi_listeners: List[EoiListener] = []
        self.dropped = 0  # messages that addressed no local APIC

    def add_lapic(self, lapic: ApicTarget) -> None:
        self.lapics.append(lapic)

    def add_eoi_listener(self, listener: EoiListener) -> None:
        self.eoi_listeners.append(listener)

    def targets(self, dest: int, logical: bool) -> List[ApicTarget]:
        return [lapic for lapic in self.lapics if lapic.matches(dest, logical)]

    def deliver(self, dest: int, logical: bool, delivery_mode: int, vector: int,
                level_triggered: bool = False) -> int:
        """Send one message; returns how many local APICs took it."""
        targets = self.targets(dest, logical)
        if not targets:
            self.dropped += 1
            return 0
        if delivery_mode == DELIVERY_LOWEST_PRIORITY and len(targets) > 1:
            targets = [min(targets, key=lambda lapic: lapic.arbitration_priority())]
        for lapic in targets:
            lapic.receive(delivery_mode, vector, level_triggered)
        return len(targets)

    def deliver_msi(self, address: int, data: int) -> int:
        """A PCI MSI: a 32-bit write of ``data`` to ``address`` in the 0xFEExxxxx window."""
        if address & MSI_ADDRESS_MASK != MSI_ADDRESS_BASE:
            self.dropped += 1
            return 0
        dest = (address >> MSI_DEST_SHIFT) & 0xFF
        logical = bool(address & MSI_DEST_MODE_LOGICAL)
        return self.deliver(dest, logical, (data >> 8) & 7, data & 0xFF, bool(data & MSI_DATA_LEVEL_TRIGGER))

    def broadcast_eoi(self, vector: int) -> None:
        for listener in self.eoi_listeners:
            listener.eoi(vector)

"""PCI bus 0: device slots, configuration access by (bus, device, function), BAR decoding.

Only bus 0 exists (no bridges) and only function 0 of each slot is used. A function that
nobody claims reads all-ones, which is how a guest's scan learns the slot is empty.

When the guest programs a BAR or flips the command register's decode bits, the BAR's region
is moved on the port or MMIO bus. A placement that would overlap guest RAM or another device
(a guest mistake, or the all-ones pattern while it sizes a BAR with decoding left on) leaves
the BAR unmapped and is counted, as a real bridge would simply not route it.
"""

from __future__ import annotations

import threading

import logging
from typing import Dict, List, Optional, Sequence

from ...bus import Bus
from ...errors import BusError
from ...irq import IrqLine
from ...memory import GuestMemory
from .config import Bar, PciError, PciFunction

log = logging.getLogger("pyhv.pci")

SLOT_COUNT = 32
FUNCTION_COUNT = 8

# INTA#-INTD# of the slots go to these GSIs with the usual swizzle (slot + pin) mod 4, the
# way Q35 wires PIRQE-H; they are IOAPIC pins, level-triggered, active high. The ACPI _PRT
# must say the same.
DEFAULT_INTX_GSIS = (20, 21, 22, 23)


def intx_gsi(slot: int, pin: int, gsis: Sequence[int] = DEFAULT_INTX_GSIS) -> int:
    """The GSI that INTx pin ``pin`` (1 = INTA#) of ``slot`` is wired to."""
    return gsis[(slot + pin - 1) % len(gsis)]


class SharedLevelLine:
    """One level-triggered GSI that several functions may drive: high while any of them is."""

    def __init__(self, line: IrqLine) -> None:
        self._line = line
        self._asserted: Dict[int, bool] = {}
        # Functions raise their lines from the vCPU thread and from I/O threads: the OR of
        # the sources and the level driven must change together.
        self._lock = threading.Lock()

    def source(self, key: int) -> "_LineSource":
        return _LineSource(self, key)

    def _set(self, key: int, level: bool) -> None:
        with self._lock:
            self._asserted[key] = level
            self._line.set_level(any(self._asserted.values()))


class _LineSource:
    def __init__(self, shared: SharedLevelLine, key: int) -> None:
        self._shared = shared
        self._key = key

    def set_level(self, level: bool) -> None:
        self._shared._set(self._key, bool(level))


class PciRoot:
    """The functions of bus 0 and the buses their BARs are decoded on."""

    def __init__(self, pio: Bus, mmio: Bus, memory: Optional[GuestMemory] = None) -> None:
        self.pio = pio
        self.mmio = mmio
        self.memory = memory
        self.functions: Dict[int, PciFunction] = {}  # devfn -> function
        self.rejected_mappings = 0

    # --- plugging ---------------------------------------------------------------------------
    def plug(self, function: PciFunction, slot: Optional[int] = None) -> int:
        """Put ``function`` at function 0 of ``slot`` (the first free one if None); the slot."""
        if slot is None:
            free = [s for s in range(SLOT_COUNT) if (s << 3) not in self.functions]
            if not free:
                raise PciError(f"PCI bus 0 is full: all {SLOT_COUNT} slots are taken")
            slot = free[0]
        if not 0 <= slot < SLOT_COUNT:
            raise PciError(f"PCI slot {slot} does not exist (0-{SLOT_COUNT - 1})")
        if slot << 3 in self.functions:
            raise PciError(f"PCI slot {slot} is already taken by {type(self.functions[slot << 3]).__name__}")
        self.functions[slot << 3] = function
        function.mappings_changed = self.update_mappings
        self.update_mappings(function)
        return slot

    def slot_of(self, function: PciFunction) -> int:
        for devfn, other in self.functions.items():
            if other is function:
                return devfn >> 3
        raise PciError(f"{type(function).__name__} is not plugged into this bus")

    def function_at(self, bus: int, devfn: int) -> Optional[PciFunction]:
        if bus != 0:
            return None
        return self.functions.get(devfn)

    # --- configuration access ----------------------------------------------------------------
    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        function = self.function_at(bus, devfn)
        if function is None:
            return (1 << (8 * size)) - 1
        return function.config_read(offset, size)

    def config_write(self, bus: int, devfn: int, offset: int, size: int, value: int) -> None:
        function = self.function_at(bus, devfn)
        if function is not None:
            function.config_write(offset, size, value)

    # --- BAR decoding ---------------------------------------------------------------------------
    def update_mappings(self, function: PciFunction) -> None:
        for bar in function.bars.values():
            wanted = function.bar_decoded_at(bar)
            if wanted == bar.address:
                continue
            bus = self.pio if bar.is_io else self.mmio
            if bar.address is not None:
                bus.detach(bar.address)
                bar.address = None
            if wanted is not None:
                self._map(function, bar, bus, wanted)

    def _map(self, function: PciFunction, bar: Bar, bus: Bus, base: int) -> None:
        name = type(function).__name__
        if not bar.is_io and self._overlaps_ram(base, bar.size):
            self.rejected_mappings += 1
            log.warning("PCI %s BAR %d at %#x+%#x overlaps guest RAM; left unmapped", name, bar.index,
                        base, bar.size)
            return
        try:
            bus.attach(base, bar.size, bar.region)
        except BusError as err:
            self.rejected_mappings += 1
            log.warning("PCI %s BAR %d left unmapped: %s", name, bar.index, err)
            return
        bar.address = base

    def _overlaps_ram(self, base: int, size: int) -> bool:
        if self.memory is None:
            return False
        return any(region.guest_addr < base + size and base < region.end for region in self.memory.regions)

    def mapped_bars(self) -> List[Bar]:
        return [bar for f in self.functions.values() for bar in f.bars.values() if bar.address is not None]

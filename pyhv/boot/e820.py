"""The BIOS-style (e820) memory map derived from guest RAM, shared by the Linux zero page
and the multiboot memory map.

The map follows the PC layout QEMU's pc machine reports: conventional memory up to the
EBDA at 0x9FC00, the EBDA and the BIOS area at 0xF0000 reserved, the VGA/option-ROM
window [0xA0000, 0xF0000) absent, and every RAM region from 1 MiB up, including the one
above the 4 GiB MMIO hole.
"""

from __future__ import annotations

from typing import Iterable, List, NamedTuple, Sequence, Tuple

from ..memory import GuestMemory, MemoryRegion

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4

EBDA_START = 0x9FC00
LOW_MEMORY_END = 0xA0000  # 640 KiB
BIOS_AREA_START = 0xF0000
HIGH_MEMORY_START = 0x100000  # 1 MiB

# Legacy ranges that are never usable RAM even where guest RAM backs them.
LEGACY_HOLES: Tuple[Tuple[int, int], ...] = ((EBDA_START, HIGH_MEMORY_START),)
LEGACY_RESERVED: Tuple[Tuple[int, int], ...] = ((EBDA_START, LOW_MEMORY_END), (BIOS_AREA_START, HIGH_MEMORY_START))


class E820Entry(NamedTuple):
    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size


def _subtract(start: int, end: int, holes: Iterable[Tuple[int, int]]) -> List[Tuple[int, int]]:
    pieces = [(start, end)]
    for hole_start, hole_end in holes:
        next_pieces = []
        for lo, hi in pieces:
            if hole_end <= lo or hole_start >= hi:
                next_pieces.append((lo, hi))
                continue
            if lo < hole_start:
                next_pieces.append((lo, hole_start))
            if hole_end < hi:
                next_pieces.append((hole_end, hi))
        pieces = next_pieces
    return pieces


def build_e820(regions: Iterable[MemoryRegion], reserved: Sequence[Tuple[int, int]] = ()) -> List[E820Entry]:
    """The memory map for guest RAM ``regions``, sorted by address.

    ``reserved`` lists extra (start, end) ranges to mark reserved and remove from RAM,
    e.g. ACPI tables or firmware data placed in RAM by other builders.
    """
    regions = list(regions)
    holes = list(LEGACY_HOLES) + list(reserved)
    entries = []
    for region in regions:
        for lo, hi in _subtract(region.guest_addr, region.end, holes):
            entries.append(E820Entry(lo, hi - lo, E820_RAM))
    for lo, hi in LEGACY_RESERVED:
        # Only report the BIOS areas where RAM would otherwise be: a 512 KiB guest has no EBDA.
        if any(r.guest_addr <= lo and hi <= r.end for r in regions):
            entries.append(E820Entry(lo, hi - lo, E820_RESERVED))
    for lo, hi in reserved:
        entries.append(E820Entry(lo, hi - lo, E820_RESERVED))
    entries.sort()
    return entries


def memory_map(memory: GuestMemory, reserved: Sequence[Tuple[int, int]] = ()) -> List[E820Entry]:
    """The e820 map of ``memory``'s RAM regions."""
    return build_e820(memory.regions, reserved)


def low_ram_end(memory: GuestMemory) -> int:
    """End of the RAM region that starts at address 0 (below the 4 GiB MMIO hole)."""
    for region in memory.regions:
        if region.guest_addr == 0:
            return region.end
    return 0


def ram_kib_above_1mib(entries: Sequence[E820Entry]) -> int:
    """KiB of contiguous RAM starting at 1 MiB (multiboot's mem_upper)."""
    end = HIGH_MEMORY_START
    for entry in sorted(entries):
        if entry.type == E820_RAM and entry.addr <= end < entry.end:
            end = entry.end
    return (end - HIGH_MEMORY_START) // 1024


def ram_kib_below_640k(entries: Sequence[E820Entry]) -> int:
    """KiB of RAM starting at address 0 (multiboot's mem_lower)."""
    end = 0
    for entry in sorted(entries):
        if entry.type == E820_RAM and entry.addr <= end < entry.end:
            end = min(entry.end, LOW_MEMORY_END)
    return end // 1024

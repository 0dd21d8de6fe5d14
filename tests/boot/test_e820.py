"""The e820 memory map from guest RAM regions, small and above the 4 GiB hole."""

from __future__ import annotations

import pytest

from pyhv.boot.e820 import (E820_RAM, E820_RESERVED, E820Entry, build_e820, low_ram_end, memory_map,
                            ram_kib_above_1mib, ram_kib_below_640k)
from pyhv.memory import GiB, GuestMemory, MiB, ram_layout


def test_small_guest() -> None:
    assert build_e820(ram_layout(64 * MiB)) == [
        E820Entry(0, 0x9FC00, E820_RAM),
        E820Entry(0x9FC00, 0x400, E820_RESERVED),
        E820Entry(0xF0000, 0x10000, E820_RESERVED),
        E820Entry(0x100000, 63 * MiB, E820_RAM),
    ]


def test_guest_above_3_gib_splits_around_the_mmio_hole() -> None:
    memory = GuestMemory(5 * GiB)  # MAP_NORESERVE: costs nothing until touched
    try:
        entries = memory_map(memory)
        assert low_ram_end(memory) == 3 * GiB
    finally:
        memory.close()
    assert entries == [
        E820Entry(0, 0x9FC00, E820_RAM),
        E820Entry(0x9FC00, 0x400, E820_RESERVED),
        E820Entry(0xF0000, 0x10000, E820_RESERVED),
        E820Entry(0x100000, 3 * GiB - MiB, E820_RAM),
        E820Entry(4 * GiB, 2 * GiB, E820_RAM),
    ]
    ram = sum(e.size for e in entries if e.type == E820_RAM)
    assert ram == 5 * GiB - (0x100000 - 0x9FC00)  # only the legacy hole is lost


def test_guest_smaller_than_one_mib_has_no_bios_area() -> None:
    assert build_e820(ram_layout(640 * 1024)) == [
        E820Entry(0, 0x9FC00, E820_RAM),
        E820Entry(0x9FC00, 0x400, E820_RESERVED),
    ]


def test_extra_reserved_ranges_are_cut_out_of_ram() -> None:
    entries = build_e820(ram_layout(16 * MiB), reserved=[(8 * MiB, 9 * MiB)])
    assert E820Entry(0x100000, 7 * MiB, E820_RAM) in entries
    assert E820Entry(8 * MiB, MiB, E820_RESERVED) in entries
    assert E820Entry(9 * MiB, 7 * MiB, E820_RAM) in entries
    for a, b in zip(entries, entries[1:]):
        assert a.end <= b.addr, "entries overlap or are unsorted"


@pytest.mark.parametrize("ram, upper_kib", [(64 * MiB, 63 * 1024), (5 * GiB, 3 * 1024 * 1024 - 1024)])
def test_multiboot_memory_sizes(ram: int, upper_kib: int) -> None:
    entries = build_e820(ram_layout(ram))
    assert ram_kib_below_640k(entries) == 639
    assert ram_kib_above_1mib(entries) == upper_kib

"""Identity-mapped page tables for entering a 64-bit kernel in long mode.

The first 4 GiB are mapped with 2 MiB pages (PML4 -> one PDPT -> four page directories),
which every x86-64 CPU supports; 1 GiB pages would need the pdpe1gb feature.
"""

from __future__ import annotations

import struct

from ..memory import GuestMemory
from .layout import PAGE_SIZE, PAGE_TABLES_ADDR

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PDE_LARGE_PAGE = 1 << 7
LARGE_PAGE_SIZE = 2 << 20
IDENTITY_MAPPED_GIB = 4
ENTRIES_PER_TABLE = 512


def page_tables_size(gib: int = IDENTITY_MAPPED_GIB) -> int:
    """Bytes of guest memory the tables take: PML4, PDPT and one directory per GiB."""
    return (2 + gib) * PAGE_SIZE


def write_identity_page_tables(memory: GuestMemory, base: int = PAGE_TABLES_ADDR,
                               gib: int = IDENTITY_MAPPED_GIB) -> int:
    """Write tables mapping [0, gib GiB) virtual to the same physical addresses; return CR3."""
    if not 1 <= gib <= ENTRIES_PER_TABLE:
        raise ValueError(f"cannot identity-map {gib} GiB with one PDPT")
    pml4 = base
    pdpt = base + PAGE_SIZE
    first_pd = base + 2 * PAGE_SIZE
    table_flags = PTE_PRESENT | PTE_WRITABLE
    memory.fill(base, page_tables_size(gib))
    memory.write_u64(pml4, pdpt | table_flags)
    memory.write(pdpt, struct.pack(f"<{gib}Q", *((first_pd + i * PAGE_SIZE) | table_flags for i in range(gib))))
    for gib_index in range(gib):
        first_page = gib_index * ENTRIES_PER_TABLE
        entries = ((first_page + i) * LARGE_PAGE_SIZE | table_flags | PDE_LARGE_PAGE for i in range(ENTRIES_PER_TABLE))
        memory.write(first_pd + gib_index * PAGE_SIZE, struct.pack(f"<{ENTRIES_PER_TABLE}Q", *entries))
    return pml4

"""Entry state, boot GDT and identity-mapped page tables, checked by walking guest memory."""

from __future__ import annotations

import struct

import pytest

from pyhv.boot.cpu_entry import long_mode_entry, protected_mode_entry
from pyhv.cpu_state import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from pyhv.memory import GuestMemory


def walk(memory: GuestMemory, cr3: int, vaddr: int) -> int:
    """Translate ``vaddr`` through 4-level paging as the CPU would (2 MiB and 1 GiB pages)."""
    table = cr3 & ~0xFFF
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = memory.read_u64(table + ((vaddr >> shift) & 0x1FF) * 8)
        if not entry & 1:
            raise LookupError(f"{vaddr:#x} not mapped at level {level}")
        if level in (1, 2) and entry & 0x80:
            page_mask = (1 << shift) - 1
            return (entry & 0x000F_FFFF_FFFF_F000 & ~page_mask) | (vaddr & page_mask)
        table = entry & 0x000F_FFFF_FFFF_F000
    return table | (vaddr & 0xFFF)


def gdt_entry(memory: GuestMemory, base: int, selector: int) -> int:
    return memory.read_u64(base + selector)


def test_long_mode_entry_state(memory: GuestMemory) -> None:
    state = long_mode_entry(memory, 0x1000000, 0x7000)
    assert state.rip == 0x1000000
    assert state.gprs["rsi"] == 0x7000
    assert state.cr0 & (CR0_PE | CR0_PG) == CR0_PE | CR0_PG
    assert state.cr4 & CR4_PAE
    assert state.efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA
    assert not state.rflags & 0x200  # interrupts off
    assert state.cs.selector == 0x10 and state.cs.l == 1 and state.cs.db == 0
    for seg in (state.ds, state.es, state.ss):
        assert seg.selector == 0x18 and seg.base == 0 and seg.limit == 0xFFFFFFFF
    # The GDT in memory holds the descriptors the hidden caches claim: 64-bit code, flat data.
    assert state.gdt.limit >= 0x1F
    assert gdt_entry(memory, state.gdt.base, 0x10) == 0x00AF9B000000FFFF
    assert gdt_entry(memory, state.gdt.base, 0x18) == 0x00CF93000000FFFF


@pytest.mark.parametrize("vaddr", [0, 0x7000, 0x1000000, 0x1234567, 0xBFFFFFFF, 0xFEE00000, 0xFFFFFFFF])
def test_first_4_gib_are_identity_mapped(memory: GuestMemory, vaddr: int) -> None:
    state = long_mode_entry(memory, 0x1000000, 0x7000)
    assert walk(memory, state.cr3, vaddr) == vaddr


def test_nothing_above_4_gib_is_mapped(memory: GuestMemory) -> None:
    state = long_mode_entry(memory, 0x1000000, 0x7000)
    with pytest.raises(LookupError):
        walk(memory, state.cr3, 4 << 30)


def test_page_tables_stay_clear_of_the_zero_page_and_gdt(memory: GuestMemory) -> None:
    memory.write(0x7000, b"\xAB" * 4096)
    state = long_mode_entry(memory, 0x1000000, 0x7000)
    assert memory.read(0x7000, 4096) == b"\xAB" * 4096
    assert not 0x7000 <= state.cr3 < 0x8000
    assert state.gdt.base + state.gdt.limit < 0x7000


def test_protected_mode_entry_state(memory: GuestMemory) -> None:
    state = protected_mode_entry(memory, 0x100000, {"rax": 0x2BADB002, "rbx": 0x9500})
    assert not state.long_mode
    assert state.cr0 & CR0_PE and not state.cr0 & CR0_PG
    assert state.cs.db == 1 and state.cs.l == 0 and state.cs.limit == 0xFFFFFFFF
    assert gdt_entry(memory, state.gdt.base, 0x10) == 0x00CF9B000000FFFF
    assert gdt_entry(memory, state.gdt.base, 0x18) == 0x00CF93000000FFFF
    assert struct.unpack("<Q", memory.read(state.gdt.base, 8))[0] == 0  # null descriptor
    assert state.gprs["rax"] == 0x2BADB002 and state.gprs["rbx"] == 0x9500

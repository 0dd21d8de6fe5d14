"""The CPU's own accesses to descriptor tables, the IDT and the TSS (Mmu.read_system).

An iret reads descriptors, and the Debian kernel irets to itself (sync_core) after each of
its thousands of boot-time code patches: an access within a page is one translation, one
crossing a page is still read byte by byte, each byte with its own translation and fault.
"""

from __future__ import annotations

import pytest

from .harness import assemble, long_mode_cpu, needs_as

DATA = 0x9_0000  # identity-mapped RAM the harness leaves free


def _counting(mmu):
    calls = []
    translate = mmu.translate

    def counted(linear, access, system=False):
        calls.append(linear)
        return translate(linear, access, system)

    mmu.translate = counted
    return calls


@needs_as
@pytest.mark.parametrize("offset, size, translations", [(0x10, 8, 1), (0xFFC, 4, 1), (0xFFD, 8, 8),
                                                        (0x20, 2, 1), (0x30, 16, 16)])
def test_a_system_read_in_one_page_translates_once(offset, size, translations):
    memory, cpu = long_mode_cpu(assemble("hlt"))
    data = bytes(range(1, 33))
    memory.write(DATA + offset, data)
    calls = _counting(cpu.mmu)
    value = cpu.mmu.read_system(DATA + offset, size)
    assert value == int.from_bytes(data[:size], "little")
    assert len(calls) == translations


@needs_as
@pytest.mark.parametrize("offset, size", [(0x10, 8), (0xFFE, 4), (0x40, 1)])
def test_a_system_write_lands_whole(offset, size):
    memory, cpu = long_mode_cpu(assemble("hlt"))
    cpu.mmu.write_system(DATA + offset, size, 0x1122334455667788 & ((1 << 8 * size) - 1))
    assert memory.read(DATA + offset, size) == (0x1122334455667788).to_bytes(8, "little")[:size]

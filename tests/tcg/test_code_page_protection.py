"""A physical page that gets translated code loses every write entry of the MMU's fast map.

Translated blocks write through ``mmu.w`` without asking whether the page holds code; the
block cache calls ``protect_code_page`` when a page gets its first block, and from then on
writes to it take the MMU's path, which drops the blocks they overwrite. A write entry left
behind, through any alias of the page, would let the guest patch code the software CPU
then goes on running stale.
"""

from __future__ import annotations

import random

import pytest

from pyhv.accel.tcg.mmu import ACCESS_WRITE

from .harness import KERNEL_BASE, PD, long_mode_cpu

MiB = 1 << 20
RAM = 8 * MiB
LARGE = 2 * MiB
CR4_PGE = 1 << 7


def _write_maps_to(mmu, ppn: int) -> list:
    return [vpn for vpn, delta in mmu.w.items() if vpn + (delta >> 12) == ppn]


def test_protect_drops_every_alias_and_nothing_else() -> None:
    memory, cpu = long_mode_cpu(b"\xf4", ram=RAM)
    mmu = cpu.mmu
    page = 0x20_3000
    mmu.translate(page, ACCESS_WRITE)
    mmu.translate(KERNEL_BASE + page, ACCESS_WRITE)  # the same physical page, another vpn
    mmu.translate(page + 0x1000, ACCESS_WRITE)
    assert len(_write_maps_to(mmu, page >> 12)) == 2
    mmu.protect_code_page(page >> 12)
    assert _write_maps_to(mmu, page >> 12) == []
    assert _write_maps_to(mmu, (page >> 12) + 1) == [(page >> 12) + 1]


def test_remapped_page_keeps_its_new_entry() -> None:
    """A vpn whose entry went with a CR3 write and now maps another page stays writable
    when its old page gets code."""
    memory, cpu = long_mode_cpu(b"\xf4", ram=RAM)
    mmu = cpu.mmu
    linear = 0x20_5000
    mmu.translate(linear, ACCESS_WRITE)  # PD[1]: physical 2 MiB
    memory.write_u64(PD + 8, (3 * LARGE) | 0x87)  # PD[1] -> physical 6 MiB
    mmu.flush(keep_global=True)
    mmu.translate(linear, ACCESS_WRITE)
    mmu.protect_code_page(linear >> 12)  # the old physical page
    assert mmu.w[linear >> 12] == 2 * LARGE
    mmu.protect_code_page((linear + 2 * LARGE) >> 12)
    assert linear >> 12 not in mmu.w


@pytest.mark.parametrize("slack", [4096, 16])
def test_random_mappings_flushes_and_protections(slack: int) -> None:
    """Against the definition: after each protection no write entry maps the page, and
    the bookkeeping stays bounded however often entries are dropped one by one (a small
    ``slack`` rebuilds it every few hundred writes)."""
    memory, cpu = long_mode_cpu(b"\xf4", ram=RAM)
    mmu = cpu.mmu
    mmu.writers_slack = slack
    # Global pages (CR4.PGE): their entries outlive CR3 writes, as the kernel's do.
    cpu.s.cr4 |= CR4_PGE
    for slot in range(RAM // LARGE):
        memory.write_u64(PD + 8 * slot, (slot * LARGE) | 0x187)
    rng = random.Random(5)
    pages = RAM >> 12
    for step in range(40_000):
        action = rng.random()
        if action < 0.6:
            page = rng.randrange(16, pages)  # above the tables and the code
            alias = KERNEL_BASE if rng.random() < 0.5 else 0
            mmu.translate(alias + (page << 12), ACCESS_WRITE)
        elif action < 0.75:
            mmu.flush_page(rng.randrange(16, pages) << 12)
        elif action < 0.8:
            # Remap one 2 MiB page elsewhere (or back), then a CR3 write.
            slot = rng.randrange(1, RAM // LARGE)
            flags = rng.choice((0x87, 0x187))
            memory.write_u64(PD + 8 * slot, (rng.randrange(1, RAM // LARGE) * LARGE) | flags)
            mmu.flush(keep_global=True)
        elif action < 0.98:
            ppn = rng.randrange(16, pages)
            mmu.code_pages[ppn] = True
            mmu.protect_code_page(ppn)
            assert _write_maps_to(mmu, ppn) == [], f"step {step}: page {ppn:#x} still writable"
        elif mmu.code_pages:  # the page's blocks were dropped: writable again
            del mmu.code_pages[rng.choice(list(mmu.code_pages))]
    for ppn in mmu.code_pages:
        assert _write_maps_to(mmu, ppn) == []
    noted = sum(len(vpns) for vpns in mmu.writers.values())
    assert noted <= 4 * len(mmu.w) + slack + 1

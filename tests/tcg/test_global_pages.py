"""A CR3 write keeps the TLB entries of global pages (CR4.PGE) and drops the others.

The Debian kernel writes CR3 about 16,000 times on its way to /init (text_poke switches to a
temporary mm and back); the MMU drops only the non-global pages then, so the kernel's own
mappings, their fast-map entries and the block chains built on them survive.
"""

from __future__ import annotations

import pytest

from pyhv.accel.tcg.mmu import ACCESS_FETCH, ACCESS_READ

from .harness import PD, PML4, assemble, long_mode_cpu, needs_as, run_to_hlt

CR4_PGE = 1 << 7
PAGE = 0x20_0000  # the second 2 MiB page, mapped by PD[1]
MARK = 0x100  # offset of the word the guest reads in that page


def remap_and_reload(pde_flags: int, reload: str) -> bytes:
    """Read the page, point PD[1] at physical 0 without invlpg, ``reload``, read again."""
    return assemble(f"""
        mov %cr4, %rax
        or ${CR4_PGE:#x}, %eax
        mov %rax, %cr4
        mov {PAGE + MARK:#x}, %rbx     # caches the translation
        movq ${pde_flags:#x}, {PD + 8:#x}   # PD[1] -> physical 0
        {reload}
        mov {PAGE + MARK:#x}, %rcx
        hlt
    """)


CR3_RELOAD = f"mov ${PML4:#x}, %rax; mov %rax, %cr3"


@pytest.mark.parametrize("global_page, reload, new_mapping", [
    (True, CR3_RELOAD, False),
    (False, CR3_RELOAD, True),
    (True, f"invlpg {PAGE + MARK:#x}", True),
])
@needs_as
def test_cr3_write_drops_only_non_global_pages(global_page: bool, reload: str,
                                               new_mapping: bool) -> None:
    pde_flags = 0x187 if global_page else 0x87  # present, writable, 2 MiB (and global)
    memory, cpu = long_mode_cpu(remap_and_reload(pde_flags, reload))
    memory.write_u64(PD + 8, PAGE | pde_flags)
    memory.write_u64(PAGE + MARK, 0x1111)
    memory.write_u64(MARK, 0x2222)
    run_to_hlt(cpu)
    regs = cpu.registers()
    assert regs["r15"] == 0  # no exception
    assert regs["rbx"] == 0x1111
    assert regs["rcx"] == (0x2222 if new_mapping else 0x1111)


@needs_as
def test_cr3_write_keeps_chains_on_global_code() -> None:
    """No epoch move (the chains and the jump cache stay) when only data pages were dropped."""
    memory, cpu = long_mode_cpu(assemble("hlt"))
    memory.write_u64(PD, 0x187)  # the code's page, global
    memory.write_u64(PD + 8, PAGE | 0x87)  # a data page, not global
    cpu.s.cr4 |= CR4_PGE
    mmu = cpu.mmu
    mmu.translate(0x10000, ACCESS_FETCH)
    mmu.translate(PAGE, ACCESS_READ)
    epoch = mmu.epoch
    mmu.flush(keep_global=True)
    assert mmu.epoch == epoch
    assert PAGE >> 12 not in mmu.r and PAGE >> 12 not in mmu.entries
    assert mmu.x.get(0x10) == 0x10000
    # Non-global code dropped: the chains must go.
    memory.write_u64(PD, 0x87)
    mmu.flush()
    mmu.translate(0x10000, ACCESS_FETCH)
    epoch = mmu.epoch
    mmu.flush(keep_global=True)
    assert mmu.epoch > epoch and 0x10 not in mmu.x

"""A permission fault on a cached TLB entry re-walks the page tables first, as the CPU does.

Linux makes a PTE more permissive (copy-on-write resolved, a stack page made writable) without
INVLPG and counts on the CPU re-walking before it faults: busybox's first ``call`` after exec
otherwise faulted on its stack page forever.
"""

from __future__ import annotations

from .harness import PD, assemble, long_mode_cpu, needs_as, run_to_hlt

PAGE = 0x20_0000  # the second 2 MiB page, mapped by PD[1]
PF_VECTOR = 14


def code(make_writable: bool) -> bytes:
    upgrade = f"orq $2, {PD + 8:#x}" if make_writable else "nop"
    return assemble(f"""
        mov %cr0, %rax
        or $0x10000, %eax          # CR0.WP: supervisor writes obey read-only pages
        mov %rax, %cr0
        mov {PAGE:#x}, %rbx        # a read caches the read-only translation
        {upgrade}                  # the PTE turns writable, no invlpg
        movq $0x55, {PAGE:#x}
        hlt
    """)


@needs_as
def test_write_after_a_pte_upgrade_without_invlpg_succeeds() -> None:
    memory, cpu = long_mode_cpu(code(make_writable=True))
    # Present, user, dirty, 2 MiB, not writable: what fork leaves of a page the parent wrote.
    memory.write_u64(PD + 8, PAGE | 0xC5)
    run_to_hlt(cpu)
    assert cpu.registers()["r15"] == 0  # no exception handler ran
    assert memory.read_u64(PAGE) == 0x55


@needs_as
def test_write_to_a_page_still_read_only_faults() -> None:
    memory, cpu = long_mode_cpu(code(make_writable=False))
    memory.write_u64(PD + 8, PAGE | 0xC5)
    run_to_hlt(cpu)
    regs = cpu.registers()
    assert regs["r15"] == PF_VECTOR and regs["cr2"] == PAGE
    assert memory.read_u64(PAGE) == 0

"""Effective addresses (pyhv/accel/tcg/operands.py): lea gives the offset in the segment,
masked to the address size; a memory access adds the segment base to that offset."""

from __future__ import annotations

import pytest

from .harness import assemble, long_mode_cpu, needs_as, run_to_hlt

pytestmark = needs_as

FS_BASE_MSR = 0xC000_0100
FS_BASE = 0x5000


@pytest.mark.parametrize("translate_after", [None, 0], ids=["interpreter", "translator"])
def test_lea_ignores_the_segment_and_wraps_at_the_address_size(translate_after):
    source = f"""
        mov ${FS_BASE_MSR:#x}, %ecx
        mov ${FS_BASE:#x}, %eax
        xor %edx, %edx
        wrmsr
        mov $0x100, %rax
        lea %fs:8(%rax), %rbx
        mov %fs:8(%rax), %rcx
        mov $0xfffffff8, %esi
        lea 0x10(%esi), %rdx
        lea %fs:0x10(%esi), %rdi
        hlt"""
    memory, cpu = long_mode_cpu(assemble(source))
    memory.write_u64(FS_BASE + 0x108, 0x1122_3344_5566_7788)
    cpu.translate_after = translate_after
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["rbx"] == 0x108  # no FS base in lea's result
    assert r["rcx"] == 0x1122_3344_5566_7788  # but in the load's address
    assert r["rdx"] == 8 and r["rdi"] == 8  # 32-bit address size: 0xfffffff8 + 0x10 wraps

"""Superblocks: a hot block that ends in a conditional jump is translated together with the
blocks it falls through to (Cpu._superblock), and leaves the translated code where a jump is
taken. Each program runs interpreted and translated (after 2 interpreted runs, so the blocks
that follow are decoded when the first one is translated); the end states must agree."""

from __future__ import annotations

import pytest

from pyhv.accel.tcg.cpu import MAX_BLOCK_INSNS, SUPERBLOCK_PARTS

from tests.tcg.harness import CODE, assemble, long_mode_cpu, needs_as
from tests.tcg.test_translate import DATA, _run, _state

pytestmark = needs_as

LOOP = """
        mov $40, %rcx
    1:  add $1, %rax            # block A: ends in a jump taken once
        cmp $25, %rax
        je 2f
        add $2, %rbx            # block B: ends in a jump taken every other time
        test $1, %rax
        jz 3f
        add $3, %rdx            # block C
    3:  dec %rcx
        jnz 1b
        hlt
    2:  add $100, %rsi
        jmp 3b
"""


def _superblocks(cpu):
    return [b for b in cpu.blocks.values() if b.fn is not None and b.size > len(b.insns)]


def _both(code: bytes, regs=None, data: bytes = b""):
    interpreted = _state(*_run(code, dict(regs or {}), None, data=data))
    memory, cpu, result = _run(code, dict(regs or {}), 2, data=data)
    return interpreted, _state(memory, cpu, result), cpu


def test_a_superblock_runs_through_jumps_not_taken_and_leaves_at_taken_ones():
    interpreted, translated, cpu = _both(assemble(LOOP))
    assert translated == interpreted
    regs = translated[2]
    assert regs["rax"] == 40 and regs["rbx"] == 2 * 39 and regs["rsi"] == 100
    assert regs["rdx"] == 3 * 20 - 3  # C runs for odd rax, except 25 (the jump to 2)
    joined = _superblocks(cpu)
    assert joined and max(b.size for b in joined) == 9  # A, B and C: 3 instructions each


def _loop_changing_at(round_: int, setup: str, change: str, joined: str) -> bytes:
    """40 rounds of A (which does ``change`` in round ``round_``), B (``joined`` first) and C."""
    return assemble(f"""
        mov $40, %rcx
        {setup}
    1:  add $1, %rax
        cmp ${round_}, %rax
        jne 4f
        {change}
    4:  cmp $1000, %rax
        je 2f
    {joined}
        test $1, %rax
        jz 3f
        add $3, %rdx
    3:  dec %rcx
        jnz 1b
        hlt
    2:  jmp 3b
    """)


def test_a_write_into_a_joined_block_drops_the_superblock():
    # B's immediate ("add $2, %rbx") is rewritten to 5 once the loop is hot: a superblock
    # that kept B's old code would go on adding 2.
    code = _loop_changing_at(20, "lea patch+3(%rip), %rdi", "movb $5, (%rdi)", "patch: add $2, %rbx")
    interpreted, translated, cpu = _both(code)
    assert translated == interpreted
    assert translated[2]["rbx"] == 2 * 19 + 5 * 21


def test_a_fault_in_a_joined_block_is_precise():
    # B loads through rsi, which points at unmapped memory from the 30th round on.
    code = _loop_changing_at(30, "mov $0x20000, %rsi", "mov $0x7000000000, %rsi", "add (%rsi), %rbx")
    interpreted, translated, cpu = _both(code, data=bytes([7]) + bytes(7))
    assert translated == interpreted
    assert translated[2]["r15"] == 14 and translated[2]["rbx"] == 7 * 29  # #PF on the 30th load


@pytest.mark.parametrize("budget", [1, 5, 9, 50, 200])
def test_an_exact_budget_is_kept_with_superblocks(budget):
    code = assemble(LOOP)
    memory, cpu = long_mode_cpu(code, {})
    cpu.translate_after = 2
    warm = cpu.run(150)  # the superblocks exist from here on
    assert _superblocks(cpu) and warm.instructions == 150
    result = cpu.run(budget)
    assert result.instructions == budget or result.reason == "hlt"
    reference, cpu2 = long_mode_cpu(code, {})
    cpu2.translate_after = None
    cpu2.run(150 + result.instructions)
    assert cpu.registers() == cpu2.registers()


def test_superblocks_stay_within_the_block_limit():
    # 30 blocks of 3 instructions in a row, each ending in a jump that is never taken.
    body = "".join(f"add $1, %rax\ncmp $-1, %rax\nje 9f\n" for _ in range(30))
    code = assemble(f"mov $20, %rcx\n1: {body}dec %rcx\njnz 1b\nhlt\n9: hlt")
    interpreted, translated, cpu = _both(code)
    assert translated == interpreted and translated[2]["rax"] == 600
    assert all(b.size <= MAX_BLOCK_INSNS for b in cpu.blocks.values())
    assert max(b.size for b in _superblocks(cpu)) == 3 * SUPERBLOCK_PARTS  # blocks of 3


def test_blocks_that_followed_a_jump_on_their_page_are_joined_too_at_kernel_addresses():
    from tests.tcg.test_kernel_half import kernel_half_cpu
    code = assemble(LOOP.replace("add $2, %rbx", "jmp 5f\n    5: add $2, %rbx"))
    interpreted = _state(*_run(code, {}, None, builder=kernel_half_cpu))
    memory, cpu, result = _run(code, {}, 2, builder=kernel_half_cpu)
    assert _state(memory, cpu, result) == interpreted
    assert max(b.size for b in _superblocks(cpu)) == 10  # A, B with its jump, C

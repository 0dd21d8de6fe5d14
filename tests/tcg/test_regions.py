"""Regions: a hot block is translated together with the blocks of the loops it is in and those
it falls through to (Cpu._region), into one function that jumps from part to part inside
itself. Each program runs interpreted and translated (after 2 interpreted runs, so the blocks
around the first one are decoded when it is translated); the end states must agree."""

from __future__ import annotations

import threading

import pytest

from pyhv.accel.tcg import cpu as cpu_module
from pyhv.accel.tcg.cpu import MAX_BLOCK_INSNS, StopReason
from pyhv.accel.tcg.translate import Translator

from tests.tcg.harness import assemble, long_mode_cpu, needs_as
from tests.tcg.test_translate import _pend_interrupt, _run, _state

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
    3:  dec %rcx                # block D: the loop's back edge
        jnz 1b
        hlt
    2:  add $100, %rsi
        jmp 3b
"""


def _regions(cpu):
    return [b for b in cpu.blocks.values() if b.fn is not None and b.parts > 1]


def _both(code: bytes, regs=None, data: bytes = b"", profiles=None):
    interpreted = _state(*_run(code, dict(regs or {}), None, data=data))
    memory, cpu = long_mode_cpu(code, dict(regs or {}))
    memory.write(0x20000, data)
    cpu.translate_after = 2
    if profiles is not None:
        cpu.translator.profiles = profiles
    result = cpu.run(10_000)
    return interpreted, _state(memory, cpu, result), cpu


def test_a_loop_runs_inside_one_translated_function():
    profiles = []
    interpreted, translated, cpu = _both(assemble(LOOP), profiles=profiles)
    assert translated == interpreted
    regs = translated[2]
    assert regs["rax"] == 40 and regs["rbx"] == 2 * 39 and regs["rsi"] == 100
    assert regs["rdx"] == 3 * 20 - 3  # C runs for odd rax, except 25 (the jump to 2)
    assert max(b.parts for b in _regions(cpu)) == 5  # A, B, C, D and the block at 2
    # Each block of the 40 rounds ran once a round, about 150 runs; translated, A was called
    # once after its warm-up, and its region went round the loop until the loop ended.
    assert sum(profile.runs for profile in profiles) < 10
    # What those few calls retired is counted from what they returned: most of the loop's
    # 40 rounds of 6-10 instructions, not the runs times the region's length.
    retired = sum(profile.retired for profile in profiles)
    assert 200 < retired < translated[1]
    assert retired > sum(profile.runs * len(profile.insns) for profile in profiles)


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


def test_a_write_into_a_part_drops_the_region():
    # B's immediate ("add $2, %rbx") is rewritten to 5 once the loop is hot: a region that
    # kept B's old code would go on adding 2.
    code = _loop_changing_at(20, "lea patch+3(%rip), %rdi", "movb $5, (%rdi)", "patch: add $2, %rbx")
    interpreted, translated, cpu = _both(code)
    assert translated == interpreted
    assert translated[2]["rbx"] == 2 * 19 + 5 * 21


def test_a_fault_in_a_part_is_precise():
    # B loads through rsi, which points at unmapped memory from the 30th round on: the fault
    # must report the instructions the region retired before it, in earlier rounds too.
    code = _loop_changing_at(30, "mov $0x20000, %rsi", "mov $0x7000000000, %rsi", "add (%rsi), %rbx")
    interpreted, translated, cpu = _both(code, data=bytes([7]) + bytes(7))
    assert translated == interpreted
    assert translated[2]["r15"] == 14 and translated[2]["rbx"] == 7 * 29  # #PF on the 30th load


@pytest.mark.parametrize("budget", [1, 5, 9, 50, 200])
def test_an_exact_budget_is_kept_inside_a_region(budget):
    code = assemble(LOOP)
    memory, cpu = long_mode_cpu(code, {})
    cpu.translate_after = 2
    warm = cpu.run(30)  # the region exists from here on
    assert _regions(cpu) and warm.instructions == 30
    result = cpu.run(budget)
    assert result.instructions == budget or result.reason == "hlt"
    reference, cpu2 = long_mode_cpu(code, {})
    cpu2.translate_after = None
    cpu2.run(30 + result.instructions)
    assert cpu.registers() == cpu2.registers()


def test_regions_stay_within_their_limits(monkeypatch):
    # A loop of 30 blocks of 3 instructions, each ending in a jump that is never taken.
    body = "".join("add $1, %rax\ncmp $-1, %rax\nje 9f\n" for _ in range(30))
    code = assemble(f"mov $20, %rcx\n1: {body}dec %rcx\njnz 1b\nhlt\n9: hlt")
    translated_regions = []
    original = Translator._generate

    def recording(translator, parts, bits):
        translated_regions.append((len(parts), sum(len(part) for part in parts), len(parts[0])))
        return original(translator, parts, bits)

    monkeypatch.setattr(Translator, "_generate", recording)
    monkeypatch.setattr(cpu_module, "REGION_PARTS", 8)
    interpreted, translated, cpu = _both(code)
    assert translated == interpreted and translated[2]["rax"] == 600
    assert max(parts for parts, _, _ in translated_regions) == 8
    assert max(first for _, _, first in translated_regions) == 5 * 3  # FALL_THROUGH_PARTS
    translated_regions.clear()
    monkeypatch.setattr(cpu_module, "REGION_PARTS", 64)
    monkeypatch.setattr(cpu_module, "REGION_INSNS", 20)
    interpreted, translated, cpu = _both(code)
    assert translated == interpreted
    assert 18 <= max(total for _, total, _ in translated_regions) <= 20
    assert all(len(b.insns) <= MAX_BLOCK_INSNS for b in cpu.blocks.values())


def test_a_region_at_kernel_addresses():
    # Signed 64-bit RIPs (see pyhv.accel.tcg.state) as the labels of the parts.
    from tests.tcg.test_kernel_half import kernel_half_cpu
    code = assemble(LOOP.replace("add $2, %rbx", "jmp 5f\n    5: add $2, %rbx"))
    interpreted = _state(*_run(code, {}, None, builder=kernel_half_cpu))
    memory, cpu, result = _run(code, {}, 2, builder=kernel_half_cpu)
    assert _state(memory, cpu, result) == interpreted
    assert max(b.parts for b in _regions(cpu)) == 5


def test_an_interrupt_stops_a_region_looping_with_if_set():
    # The loop never ends. Another thread raises an interrupt while it runs: the region must
    # leave at its next jump so that the run loop delivers it (the handler halts). A region
    # that missed it would loop until the watchdog's exit request.
    code = assemble("sti\n1: inc %rax\ntest $7, %rax\njnz 2f\ninc %rbx\n2: jmp 1b")
    memory, cpu = long_mode_cpu(code)
    cpu.translate_after = 2
    assert cpu.run(2000).reason == StopReason.BUDGET
    assert _regions(cpu)
    interrupt = threading.Timer(0.05, _pend_interrupt, (cpu, 0x44))
    watchdog = threading.Timer(10, cpu.kick)
    interrupt.start()
    watchdog.start()
    try:
        result = cpu.run(10**12)
    finally:
        interrupt.cancel()
        watchdog.cancel()
    assert result.reason == StopReason.HLT
    assert cpu.registers()["r15"] == 0x44
    # Precise state: rbx counts the multiples of 8 rax passed, less one if the interrupt came
    # in between the two incs (where the first block ends when its fall-through was not yet
    # decoded as it was translated).
    rax, rbx = cpu.registers()["rax"], cpu.registers()["rbx"]
    assert rbx == rax // 8 or (rax % 8 == 0 and rbx == rax // 8 - 1)

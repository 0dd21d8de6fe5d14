"""On PyPy the CPU's state stays in machine words wherever its value fits one.

PyPy keeps an integer a long once an operation made it one, whatever its value: ``5 & (2**64
- 1)``, ``x - 2**64`` and a struct ``"Q"`` field are all longs, and so is everything computed
from them afterwards (``rflags & IF`` included). Each operation on a long is a call that
allocates. In the Debian boot RFLAGS was a long in 94% of the samples and RIP in 43%, from a
64-bit stack pop (iretq, popfq), the decoder's masked 64-bit immediates (every relative jump
target) and the masking of indirect jump targets; removing those took the boot from 41.7 to
30.2 s of CPU on PyPy (three runs each, side by side).

These tests pin each of those places. CPython has no such distinction, so they run on PyPy
only; they fail on the code before the change.
"""

from __future__ import annotations

import pytest

from pyhv.accel.tcg.decoder import decode
from pyhv.accel.tcg.operands import sext
from pyhv.accel.tcg.state import signed64

from .harness import CODE, KERNEL_BASE, STACK_TOP, assemble, long_mode_cpu, needs_as, run_to_hlt

pypy = pytest.importorskip("__pypy__", reason="machine words and long integers differ only on PyPy")

MASK64 = (1 << 64) - 1


def is_word(value: int) -> bool:
    return pypy.internal_repr(value).startswith("<W_IntObject")


def test_the_check_tells_a_long_from_a_word():
    assert not is_word(0x401000 & MASK64)  # the PyPy behaviour these tests are about
    assert is_word(0x401000)


# Computed when the test runs: values made at collection reach the test as words.
@pytest.mark.parametrize("make, expected", [
    (lambda: 0x401000 & MASK64, 0x401000),
    (lambda: 0xFFFF_FFFF_8100_0000, -0x7F00_0000),
    (lambda: (1 << 64) + 5, 5),
    (lambda: -5, -5),
    (lambda: (0xFFFF_FFFF_8100_0000 + 7) - (1 << 64), -0x7F00_0000 + 7),
], ids=["masked-small", "kernel-address", "wrapped", "negative-word", "long-in-range"])
def test_signed64_gives_a_machine_word(make, expected):
    result = signed64(make())
    assert result == expected
    assert is_word(result)


def test_eight_byte_reads_below_2_63_are_words():
    memory, cpu = long_mode_cpu(b"\xf4")
    memory.write_u64(0x20000, 0x246)
    memory.write_u64(0x20008, 0xFFFF_FFFF_8100_0000)
    small = cpu.mmu.read(0x20000, 8)
    assert small == 0x246 and is_word(small)
    assert cpu.mmu.read(0x20008, 8) == 0xFFFF_FFFF_8100_0000  # unsigned, as the handlers take it
    assert cpu.mmu.phys_read(0x20000, 8) == 0x246 and is_word(cpu.mmu.phys_read(0x20000, 8))


@pytest.mark.parametrize("code, imm", [
    (b"\x48\x83\xc0\x08", 8),  # add $8, %rax
    (b"\x48\x05\x00\x10\x00\x00", 0x1000),  # add $0x1000, %rax
])
def test_small_64_bit_immediates_are_words(code, imm):
    insn = decode(code, 0, CODE, 64)
    assert insn.imm == imm and is_word(insn.imm)


def test_negative_64_bit_immediates_stay_unsigned():
    assert decode(b"\x48\x83\xc0\xff", 0, CODE, 64).imm == MASK64  # add $-1, %rax


def test_relative_jump_targets_are_words():
    insn = decode(b"\x74\x10", 0, KERNEL_BASE + CODE, 64)  # je .+0x12
    assert insn.imm == signed64(KERNEL_BASE + CODE + 0x12) and is_word(insn.imm)


@needs_as
def test_interpreted_code_leaves_rip_rflags_and_registers_in_words():
    # popfq of a value with bit 63 set, bt on such a value, an indirect jump: each made a
    # long that stayed in RFLAGS or RIP.
    code = assemble("""
        movabs $0x8000000000000247, %rax
        push %rax
        popfq
        mov %rax, %rcx
        bt $63, %rcx
        lea 1f(%rip), %rbx
        jmp *%rbx
    1:  mov (%rsp), %rdx
        cmp $8, %rdx
        jne 2f
    2:  hlt
    """)
    memory, cpu = long_mode_cpu(code)
    cpu.translate_after = None  # the interpreter: translated blocks keep their own locals
    cpu.set_registers({"rip": KERNEL_BASE + CODE, "rsp": KERNEL_BASE + STACK_TOP})
    run_to_hlt(cpu)
    s = cpu.s
    assert s.rflags & 1 == 1  # CF from bt
    assert is_word(s.rflags), "RFLAGS is a long integer"
    assert is_word(s.rip), "RIP is a long integer"
    assert all(is_word(value) for value in s.regs)


def test_the_64_bit_stack_mask_is_a_word():
    memory, cpu = long_mode_cpu(b"\xf4")
    assert cpu.stack_mask == -1 and is_word(cpu.stack_mask)


def test_sign_extension_of_eight_bytes_gives_words():
    assert sext(0xFFFF_FFFF_FFFF_FFFE, 8) == -2 and is_word(sext(0xFFFF_FFFF_FFFF_FFFE, 8))
    assert sext(0x7FFF_FFFF_FFFF_FFFF, 8) == (1 << 63) - 1

"""Code, stack and data in the upper half of the address space, where the Linux kernel runs.

The software CPU keeps 64-bit registers in a signed form (see pyhv.accel.tcg.state), so
addresses of 2**63 and above take different paths than low ones: negative TLB page numbers,
signed loads and stores of 64-bit values, signed RIPs in the block chains. The interpreter
computes on unsigned values and the translated blocks on signed ones, so running the same
random programs both ways at kernel addresses checks the two against each other.
"""

from __future__ import annotations

import random

import pytest

from tests.tcg.harness import CODE, KERNEL_BASE, STACK_TOP, assemble, long_mode_cpu, needs_as
from tests.tcg.test_translate import _REGS64, DATA, _random_program, _random_value, _run, _state

pytestmark = needs_as


def kernel_half_cpu(code: bytes, regs: dict):
    """long_mode_cpu with RIP, RSP and ``regs`` given in the upper-half alias."""
    memory, cpu = long_mode_cpu(code, regs)
    cpu.set_registers({"rip": KERNEL_BASE + CODE, "rsp": KERNEL_BASE + STACK_TOP})
    return memory, cpu


@pytest.mark.parametrize("seed", range(60))
def test_random_programs_at_kernel_addresses_agree(seed):
    rng = random.Random(1000 + seed)
    code = _random_program(rng)
    regs = {name: _random_value(rng) for name in _REGS64}
    regs.update(rbp=KERNEL_BASE + DATA, rflags=0x2 | (rng.getrandbits(12) & 0x8D5))
    data = bytes(rng.getrandbits(8) for _ in range(256))
    interpreted = _state(*_run(code, regs, None, data=data, builder=kernel_half_cpu))
    translated = _state(*_run(code, regs, 0, data=data, builder=kernel_half_cpu))
    assert interpreted[0] == "hlt"
    assert translated == interpreted


KERNEL_PROGRAM = """
    lea data(%rip), %rbx          # a kernel pointer (rip-relative)
    mov %rbx, (%rsp)              # stored and loaded as a 64-bit value
    mov (%rsp), %rcx
    push %rbx
    pop %rdx
    call 1f                       # the return address is a kernel address
    jmp 2f
1:  mov (%rsp), %rsi
    ret
2:  mov $0x1122334455667788, %rax
    mov %rax, 8(%rbx)             # through the pointer
    add $16, %rbx
    cmp %rcx, %rbx                # unsigned compare of kernel pointers
    seta %r8b
    shr $60, %rcx                 # logical shift of a negative register form
    sar $60, %rdx                 # arithmetic shift
    hlt
    .align 16
data: .quad 0, 0
"""


@pytest.mark.parametrize("translate_after", [None, 0])
def test_kernel_pointers_through_registers_memory_and_stack(translate_after):
    code = assemble(KERNEL_PROGRAM)
    memory, cpu, result = _run(code, {}, translate_after, builder=kernel_half_cpu)
    regs = cpu.registers()
    data = KERNEL_BASE + CODE + len(code) - 16
    hlt_at = code.rindex(b"\xf4", 0, len(code) - 16)
    assert result.reason == "hlt"
    assert regs["rip"] == KERNEL_BASE + CODE + hlt_at + 1  # reported unsigned
    assert regs["rbx"] == data + 16
    assert regs["rcx"] == data >> 60 == 0xF
    assert regs["rdx"] == 0xFFFF_FFFF_FFFF_FFFF  # sar of a negative value
    assert regs["r8"] & 0xFF == 1
    call_site = code.index(b"\xe8")
    assert regs["rsi"] == KERNEL_BASE + CODE + call_site + 5
    assert regs["rsp"] == KERNEL_BASE + STACK_TOP
    assert memory.read_u64(data - KERNEL_BASE + 8) == 0x1122334455667788


@pytest.mark.parametrize("translate_after", [None, 0])
def test_interpreted_moves_keep_registers_in_the_signed_form(translate_after):
    """64-bit mov, push, pop and ret move kernel pointers without leaving the register form
    (unsigned values would be long integers on PyPy), and pop %rsp still sets RSP last."""
    code = assemble("""
        lea 8(%rsp), %rbx
        push %rbx
        mov (%rsp), %rcx
        mov %rcx, %rdx
        mov %rdx, -8(%rsp)
        pop %rsp                  # RSP = the value popped (8 above the old RSP)
        mov -16(%rsp), %rsi
        hlt
    """)
    memory, cpu, result = _run(code, {}, translate_after, builder=kernel_half_cpu)
    assert result.reason == "hlt"
    top = KERNEL_BASE + STACK_TOP
    regs = cpu.registers()
    assert regs["rbx"] == regs["rcx"] == regs["rdx"] == regs["rsi"] == top + 8
    assert regs["rsp"] == top + 8
    assert all(-2**63 <= value < 2**63 for value in cpu.s.regs)
    assert cpu.s.regs[4] == top + 8 - 2**64


@pytest.mark.parametrize("translate_after", [None, 0])
def test_64_bit_alu_on_register_form_values_sets_the_architectural_flags(translate_after):
    code = assemble("""
        movabs $0x8000000000000000, %rax
        mov $1, %rbx
        sub %rbx, %rax            # 0x7fff_ffff_ffff_ffff: OF, no CF
        pushf
        pop %r8
        mov $-1, %rcx
        add %rbx, %rcx            # 0: CF and ZF, no OF
        pushf
        pop %r9
        mov $-2, %rdx
        cmp %rdx, %rbx            # 1 - 0xffff_ffff_ffff_fffe: CF (unsigned borrow) only
        pushf
        pop %r10
        hlt
    """)
    _memory, cpu, result = _run(code, {}, translate_after, builder=kernel_half_cpu)
    assert result.reason == "hlt"
    regs = cpu.registers()
    arith = 0x8C1  # OF SF ZF CF
    assert regs["rax"] == 0x7FFF_FFFF_FFFF_FFFF and regs["rcx"] == 0
    assert (regs["r8"] & arith, regs["r9"] & arith, regs["r10"] & arith) == (0x800, 0x41, 0x1)


@pytest.mark.parametrize("translate_after", [None, 0])
def test_64_bit_alu_with_negative_immediates_on_kernel_pointers(translate_after):
    code = assemble("""
        lea 0x7ff(%rsp), %rax
        and $-0x100, %rax         # align a kernel pointer down
        mov %rax, %rbx
        sub $-0x10, %rbx          # +16
        cmp $-1, %rbx             # a kernel pointer is below 2**64 - 1: CF
        pushf
        pop %r8
        xor $-1, %rcx             # 0 -> all ones
        hlt
    """)
    _memory, cpu, result = _run(code, {"rcx": 0}, translate_after, builder=kernel_half_cpu)
    assert result.reason == "hlt"
    regs = cpu.registers()
    expected = (KERNEL_BASE + STACK_TOP + 0x7FF) & ~0xFF
    assert regs["rax"] == expected and regs["rbx"] == expected + 16
    assert regs["r8"] & 0x8C1 == 0x81  # CF, SF (the kernel pointer's top bit); not ZF, OF
    assert regs["rcx"] == 0xFFFF_FFFF_FFFF_FFFF


@pytest.mark.parametrize("translate_after", [None, 0])
def test_64_bit_shifts_of_kernel_pointers(translate_after):
    code = assemble("""
        mov %rax, %rbx
        mov %rax, %rcx
        mov %rax, %rdx
        shr $63, %rbx             # 1
        shl $4, %rcx              # 0xffff_fff8_0000_0000: CF (a 1 shifted out), SF, not OF
        pushf
        pop %r8
        sar $63, %rdx             # all ones
        mov %rax, %rsi
        shr $1, %rsi              # OF = the top bit of the operand
        pushf
        pop %r9
        hlt
    """)
    regs0 = {"rax": 0xFFFF_FFFF_8000_0000}
    _memory, cpu, result = _run(code, regs0, translate_after, builder=kernel_half_cpu)
    assert result.reason == "hlt"
    regs = cpu.registers()
    assert regs["rbx"] == 1 and regs["rcx"] == 0xFFFF_FFF8_0000_0000
    assert regs["rdx"] == 0xFFFF_FFFF_FFFF_FFFF and regs["rsi"] == 0x7FFF_FFFF_C000_0000
    assert regs["r8"] & 0x8C1 == 0x81 and regs["r9"] & 0x8C1 == 0x800

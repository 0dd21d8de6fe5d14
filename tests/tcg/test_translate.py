"""The block translator against the interpreter: same registers, flags, memory, faults,
instruction counts and budget stops, on random instruction mixes and on crafted cases."""

from __future__ import annotations

import array
import os
import random
import subprocess
import tempfile
from typing import Dict, List, Optional, Tuple

import pytest

from pyhv.accel.tcg import StopReason
from pyhv.accel.tcg.translate import Translator
from pyhv.accel.tcg.translate_insns import EMITTERS

from .harness import (CODE, STACK_TOP, assemble, long_mode_cpu, needs_as, protected_mode_cpu, real_mode_cpu,
                      run_to_hlt)

pytestmark = needs_as

DATA = 0x20000
UNMAPPED = 0x500000  # the harness maps 4 MiB

_REGS64 = ["rax", "rcx", "rdx", "rbx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13"]
_REGS32 = ["eax", "ecx", "edx", "ebx", "esi", "edi", "r8d", "r9d", "r10d", "r11d"]
_REGS16 = ["ax", "cx", "dx", "bx", "si", "di", "r8w", "r9w"]
_REGS8 = ["al", "cl", "dl", "bl", "ah", "ch", "dh", "bh"]
_REGS8_REX = ["al", "cl", "sil", "dil", "r8b", "r9b"]
_ALU = ["add", "sub", "and", "or", "xor", "cmp", "test", "adc", "sbb"]
_CC = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"]


def _templates() -> List[str]:
    """Instruction forms the generator draws from (translated ones and fallbacks)."""
    out = []
    sized = [("q", _REGS64), ("l", _REGS32), ("w", _REGS16), ("b", _REGS8), ("b", _REGS8_REX)]
    for op in _ALU:
        for suffix, regs in sized:
            for k in range(3):
                a, b = regs[k], regs[(k * 3 + 1) % len(regs)]
                out.append(f"{op}{suffix} %{a}, %{b}")
                out.append(f"{op}{suffix} %{a}, %{a}")
            out.append(f"{op}{suffix} ${0x7F if suffix == 'b' else 0x12345 & (0xFFF if suffix == 'w' else 0xFFFFF)}, %{regs[2]}")
            out.append(f"{op}{suffix} $-3, %{regs[1]}")
            out.append(f"{op}{suffix} {8 * len(op)}(%rbp), %{regs[3]}")
            out.append(f"{op}{suffix} %{regs[0]}, {16 + len(op)}(%rbp)")
    for op in ("inc", "dec", "neg", "not"):
        for suffix, regs in sized:
            out.append(f"{op}{suffix} %{regs[1]}")
        out.append(f"{op}q 24(%rbp)")
        out.append(f"{op}b 25(%rbp)")
    for op in ("shl", "shr", "sar", "rol", "rcr"):
        for count in (1, 4, 31, 63):
            out.append(f"{op}q ${count}, %rax")
            out.append(f"{op}l ${count & 31}, %edx")
        out.append(f"{op}b $3, %cl")
        out.append(f"{op}w $1, 40(%rbp)")
        out.append(f"{op}q %cl, %rbx")
    for cc in _CC:
        out.append(f"set{cc} %al")
        out.append(f"set{cc} %bh")
        out.append(f"set{cc} 48(%rbp)")
        out.append(f"cmov{cc}q %rcx, %rdx")
        out.append(f"cmov{cc}l 56(%rbp), %esi")
        out.append(f"cmov{cc}w %r8w, %r9w")
    out += ["mov %rax, %rbx", "mov %ecx, %edx", "mov %si, %di", "mov %ah, %bl", "mov %r8b, %al",
            "mov 64(%rbp), %r10", "mov %r11, 72(%rbp)", "movl $-5, 80(%rbp)", "movb $9, 81(%rbp)",
            "mov $0x123456789abcdef0, %r12", "mov $-1, %r13d", "mov %eax, 88(%rbp,%rcx,1)",
            "lea 7(%rax,%rbx,4), %rcx", "lea -9(%rsi), %edx", "lea (%rdi,%r8,8), %r9w",
            "movzbl %ah, %ecx", "movzwl 90(%rbp), %edx", "movsbq %al, %rsi", "movswl %r8w, %edi",
            "movslq %ecx, %r10", "movsbw %dl, %r11w", "xchg %rax, %rcx", "xchg %bl, %ah",
            "xchg %r9, 96(%rbp)", "cltq", "cqto", "cwtl", "cltd", "cbtw", "cwtd", "nop",
            "push %rax", "pop %rbx", "pushq $-7", "pushq 104(%rbp)", "push %r12", "pop %r13",
            "pushw %cx", "popw %dx", "pushf", "popf", "clc", "stc", "cmc", "bsf %rax, %rcx",
            "bt $3, %rdx", "imul %rcx, %rdx", "bswap %esi", "sahf", "lahf", "xadd %rax, %rbx",
            "cmpxchg %rcx, %rdx", "nopl 0(%rax)"]
    return out


def _assemble_all(lines: List[str]) -> List[bytes]:
    """Assemble every line once (one `as` run) and return each line's bytes."""
    source = "".join(f"L{k}:\n{line}\n" for k, line in enumerate(lines)) + f"L{len(lines)}:\n"
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, out = (os.path.join(tmp, name) for name in ("t.s", "t.o", "t.bin"))
        with open(src, "w") as f:
            f.write(".code64\n" + source)
        subprocess.run(["as", "--64", "-o", obj, src], check=True, capture_output=True)
        symbols = subprocess.run(["nm", obj], check=True, capture_output=True, text=True).stdout
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", obj, out], check=True)
        with open(out, "rb") as f:
            code = f.read()
    offsets: Dict[int, int] = {}
    for row in symbols.split("\n"):
        parts = row.split()
        if len(parts) == 3 and parts[2].startswith("L"):
            offsets[int(parts[2][1:])] = int(parts[0], 16)
    return [code[offsets[k]:offsets[k + 1]] for k in range(len(lines))]


_POOL: List[bytes] = []
_SETTERS: List[bytes] = []
_CONSUMERS: List[bytes] = []


def _pool() -> List[bytes]:
    if not _POOL:
        lines = _templates()
        _POOL.extend(_assemble_all(lines))
        for line, code in zip(lines, _POOL):
            if line.split()[0][:3] in ("set", "cmo"):
                _CONSUMERS.append(code)
            elif line.split()[0][:-1] in _ALU + ["inc", "dec", "neg", "shl", "shr", "sar"]:
                _SETTERS.append(code)
    return _POOL


def _random_piece(rng: random.Random) -> bytes:
    pool = _pool()
    choice = rng.random()
    if choice < 0.3:
        return rng.choice(_SETTERS) + rng.choice(_CONSUMERS)
    if choice < 0.45:
        # setter; jcc over the next instruction (the block ends at the jcc)
        skipped = rng.choice(pool)
        return rng.choice(_SETTERS) + bytes([0x70 + rng.randrange(16), len(skipped)]) + skipped
    return rng.choice(pool)


def _random_program(rng: random.Random) -> bytes:
    body = b"".join(_random_piece(rng) for _ in range(rng.randint(1, 16)))
    # mov $3, %r15d ; top: body ; dec %r15d ; jnz top ; hlt    (the body runs three times)
    jump_back = -(len(body) + 3 + 2)
    return (b"\x41\xbf\x03\x00\x00\x00" + body + b"\x41\xff\xcf"
            + (b"\x75" + (jump_back & 0xFF).to_bytes(1, "little") if jump_back >= -128
               else b"\x0f\x85" + (jump_back - 4 & 0xFFFFFFFF).to_bytes(4, "little")) + b"\xf4")


def _run(code: bytes, regs: dict, translate_after: Optional[int], budget: int = 10_000,
         data: bytes = b"", builder=long_mode_cpu):
    memory, cpu = builder(code, regs)
    memory.write(DATA, data)
    cpu.translate_after = translate_after
    result = cpu.run(budget)
    return memory, cpu, result


def _state(memory, cpu, result):
    return (result.reason, result.instructions, cpu.registers(), memory.read(DATA, 256),
            memory.read(0x7F000, 0x1000), cpu.instructions_retired)


_EDGES = (0, 1, 2, 0x40, 0x4000, 0x4000_0000, 0x4000_0000_0000_0000, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000,
          0xFFFF_FFFF, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF)


def _random_value(rng: random.Random) -> int:
    choice = rng.random()
    if choice < 0.4:
        return rng.choice(_EDGES)
    return rng.getrandbits(64) if choice < 0.8 else rng.getrandbits(8)


@pytest.mark.parametrize("seed", range(150))
def test_random_instruction_mix_matches_interpreter(seed):
    rng = random.Random(seed)
    code = _random_program(rng)
    regs = {name: _random_value(rng) for name in _REGS64}
    regs.update(rbp=DATA, rflags=0x2 | (rng.getrandbits(12) & 0x8D5))
    data = bytes(rng.getrandbits(8) for _ in range(256))
    interpreted = _state(*_run(code, regs, None, data=data))
    translated = _state(*_run(code, regs, 0, data=data))
    assert translated == interpreted


def test_translation_happens_and_counts_instructions():
    code = assemble("mov $100, %ecx\n1: add %rcx, %rax\ndec %ecx\njnz 1b\nhlt")
    memory, cpu, result = _run(code, {}, 0)
    assert cpu.translator.translated >= 2
    assert result.reason == StopReason.HLT and result.instructions == 2 + 300
    assert cpu.instructions_retired == result.instructions
    assert cpu.registers()["rax"] == 5050


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 7, 100, 301, 302])
def test_budget_stops_exactly_with_translated_blocks(budget):
    code = assemble("mov $100, %ecx\n1: add %rcx, %rax\ndec %ecx\njnz 1b\nhlt")
    interpreted = _state(*_run(code, {}, None, budget=budget))
    translated = _state(*_run(code, {}, 0, budget=budget))
    assert translated == interpreted
    assert translated[1] == min(budget, 302)


_FAULTING = [
    # A store to an unmapped page in the middle of a block, after flag and register changes.
    "add %rcx, %rax\ncmp $5, %rax\npush %rax\nmov %rax, (%rbx)\ninc %rax\nhlt",
    # A read-modify-write that faults: nothing of it may be committed.
    "sub $1, %rdx\ninc %rsi\naddq $7, 8(%rbx)\nmov $1, %rdx\nhlt",
    # A fault after an interpreter fallback (cpuid) in the same block.
    "inc %rcx\ncpuid\ndec %rdi\nmov (%rbx), %rcx\nhlt",
    # Pop into memory faulting: the interpreter restores RSP.
    "push %rax\nneg %rax\npopq (%rbx)\nhlt",
    # ret to an address read from an unmapped stack.
    "mov %rbx, %rsp\nadd $3, %rax\nret",
    # #DE from div (a fallback) after translated flag changes.
    "xor %ecx, %ecx\nadd %rax, %rdx\ndiv %rcx\nhlt",
]


@pytest.mark.parametrize("source", _FAULTING)
def test_faults_leave_the_same_state_as_the_interpreter(source):
    code = assemble(source)
    regs = {"rax": 0x7FFF_FFFF_FFFF_FFFE, "rbx": UNMAPPED, "rcx": 3, "rdx": 0, "rsi": 0xFF,
            "rdi": 0}
    interpreted = _state(*_run(code, regs, None))
    translated = _state(*_run(code, regs, 0))
    assert translated == interpreted
    assert translated[2]["r15"] in (0, 14)  # #DE or #PF reached its handler


def test_store_into_the_running_block_is_seen_next_iteration():
    # The loop patches the immediate of its own `mov $1, %edx` after the block is hot.
    src = """
        mov $6, %ecx
        xor %eax, %eax
    top:
        mov $1, %edx
        add %rdx, %rax
        lea top+1(%rip), %rbx
        cmp $3, %ecx
        jne 1f
        movb $100, (%rbx)
    1:  dec %ecx
        jnz top
        hlt"""
    code = assemble(src)
    interpreted = _state(*_run(code, {}, None))
    translated = _state(*_run(code, {}, 0))
    assert translated == interpreted
    assert translated[2]["rax"] == 4 * 1 + 2 * 100  # patched during the 4th of 6 iterations


@pytest.mark.parametrize("bits", [16, 32])
def test_legacy_modes_match_interpreter(bits):
    src = """
        mov $5, %cx
    1:  push %cx
        add %cx, %ax
        pop %dx
        shl $1, %dx
        mov %dx, 0x100(%bx)
        mov 0x100(%bx), %si
        cmp $2, %cx
        setl %bl
        dec %cx
        jnz 1b
        hlt"""
    code = assemble(src, bits)
    builder = real_mode_cpu if bits == 16 else protected_mode_cpu
    memory, cpu, result = _run(code, {}, None, builder=builder)
    interpreted = (result.instructions, cpu.registers())
    memory, cpu, result = _run(code, {}, 0, builder=builder)
    assert cpu.translator.translated >= 1
    assert (result.instructions, cpu.registers()) == interpreted
    assert result.reason == StopReason.HLT


def _pend_interrupt(cpu, vector: int) -> List[int]:
    """Make ``vector`` pending on ``cpu``; the list returned gets the RIP where it is taken."""
    taken: List[int] = []

    def acknowledge():
        taken.append(cpu.s.rip)
        cpu.interrupt_request = False
        return vector

    cpu.interrupt_request = True
    cpu.acknowledge_interrupt = acknowledge
    return taken


def test_interrupt_waits_for_block_boundary_and_sti_shadow():
    # sti; nop; <hot loop>: the interrupt is taken after the nop, never inside sti's shadow.
    code = assemble("sti\nnop\n1: inc %rax\ncmp $50, %rax\njne 1b\nhlt")
    memory, cpu = long_mode_cpu(code)
    cpu.translate_after = 0
    taken = _pend_interrupt(cpu, 0x40)
    result = cpu.run(1000)
    assert result.reason == StopReason.HLT
    assert taken == [CODE + 2]  # after sti and nop, before the loop
    assert cpu.registers()["r15"] == 0x40 and cpu.registers()["rax"] == 0


def test_a_pending_interrupt_with_if_clear_keeps_the_chains_and_popf_lets_it_in():
    # A loop of two blocks runs with an interrupt pending and IF clear (early boot, irqsave
    # sections): translated code must keep running (in its region, or along the chains), not
    # return to the full lookup after each block. Then popf sets IF and the interrupt is
    # taken right after that block.
    code = assemble("""
        1: inc %rax
           cmp $400, %rax
           je 2f
           jmp 1b
        2: pushq $0x202
           popf
           nop
           hlt""")
    memory, cpu = long_mode_cpu(code)
    cpu.translate_after = 0
    taken = _pend_interrupt(cpu, 0x41)
    lookups = []

    class CountingBlocks(dict):
        def get(self, key, default=None):
            lookups.append(key)
            return dict.get(self, key, default)

    cpu.blocks = CountingBlocks()
    result = cpu.run(10_000)
    assert result.reason == StopReason.HLT
    # Before, a pending interrupt ended every chain: a full lookup for each of the 400 runs.
    assert len(lookups) < 20
    assert cpu.registers()["rax"] == 400
    assert len(taken) == 1 and cpu.registers()["r15"] == 0x41


def test_iretq_to_the_same_code_segment_keeps_the_block_chains():
    # Every interrupt return reloads CS; only a change of code width or CS base may drop the
    # chains (the MMU epoch), or each timer tick would make the kernel re-link everything.
    code = assemble("""
        mov %rsp, %rbx
        pushq $0x10
        pushq %rbx
        pushq $0x2
        pushq $0x08
        lea 1f(%rip), %rax
        pushq %rax
        iretq
        1: hlt""")
    memory, cpu = long_mode_cpu(code)
    before = cpu.mmu.epoch
    result = cpu.run(100)
    assert result.reason == StopReason.HLT
    assert cpu.mmu.epoch == before
    assert cpu.bits == 64


def _translated_source(source: str, count: int) -> str:
    """The Python source the translator generates for the first ``count`` instructions."""
    from pyhv.accel.tcg.decoder import decode
    memory, cpu = long_mode_cpu(assemble(source))
    translator = Translator(cpu.mmu, EMITTERS)
    translator.keep_source = True
    code = memory.read(CODE, 16 * count)
    insns, pos = [], 0
    for _ in range(count):
        insns.append(decode(code, pos, CODE + pos, 64))
        pos += insns[-1].length
    translator.translate(insns, 64)
    return translator.last_source


def test_a_flag_result_reads_its_masked_operands_back_from_their_locals():
    # 32-bit operands are written out masked, an AND each time on CPython: the result takes
    # them from fa<k>/fb<k>. Plain names and literals are read as they are.
    source = _translated_source("cmp %ecx, %edx\nhlt", 1)
    assert "fr0 = (fa0 - fb0) & 0xffffffff" in source
    source = _translated_source("test %ecx, %edx\nhlt", 1)
    assert "fr0 = fa0 & fb0" in source
    source = _translated_source("inc %edx\nhlt", 1)
    assert "fr0 = (fa0 + 1) & 0xffffffff" in source
    source = _translated_source("and %rcx, %rdx\nhlt", 1)
    assert "fr0 = r2 & r1" in source


def test_untranslated_forms_fall_back_to_the_handler():
    source = _translated_source("bsf %rcx, %rax\nrcr $3, %rax\nadd %rcx, %rax\nhlt", 3)
    assert "H0(cpu, I0)" in source and "H1(cpu, I1)" in source and "H2(" not in source


_SETTER_FORMS = ["add %rcx, %rdx", "sub %rcx, %rdx", "cmp %rcx, %rdx", "and %rcx, %rdx",
                 "test %rcx, %rdx", "xor %rcx, %rdx", "inc %rdx", "dec %rdx", "neg %rdx",
                 "shl $1, %rdx", "shr $1, %rdx", "sar $7, %rdx", "addb %cl, %dl", "subb %cl, %dl",
                 "cmpw %cx, %dx", "incb %dl", "decw %dx", "negl %edx", "shll $3, %edx",
                 "sarb $1, %dl", "adc %rcx, %rdx", "sbb %rcx, %rdx", "adcb %cl, %dl",
                 "sbbl %ecx, %edx", "rol $5, %rdx", "ror $1, %edx", "rolw $17, %dx",
                 "shl %cl, %rdx", "shr %cl, %edx", "sar %cl, %dx", "shlb %cl, %dl",
                 "imul %rcx, %rdx", "imul %cx, %dx", "imul $-3, %rcx, %rdx", "imul $0x7f, %ecx, %edx",
                 "imul $300, %cx, %dx", "imul %rdx, %rdx", "imul $-0x10000, %rcx, %rdx"]


@pytest.mark.parametrize("setter", _SETTER_FORMS)
def test_every_condition_after_every_flag_setter(setter):
    # One setter, then all 16 conditions stored by setcc into memory, for edge operands.
    source = setter + "\n" + "\n".join(f"set{cc} {k}(%rbp)" for k, cc in enumerate(_CC)) + "\nhlt"
    code = assemble(source)
    runs = {}
    for translate_after in (None, 0):
        memory, cpu = long_mode_cpu(code)
        cpu.translate_after = translate_after
        out = []
        for a in _EDGES:
            for b in _EDGES:
                cpu.set_registers({"rip": CODE, "rcx": a, "rdx": b, "rbp": DATA})
                assert cpu.run(100).reason == StopReason.HLT
                out.append(memory.read(DATA, 16))
        runs[translate_after] = out
    assert runs[0] == runs[None]


def _stores_both_ways(code: bytes, pairs: List[Tuple[int, int]], size: int) -> Tuple[list, list]:
    """What ``code`` leaves in the ``size`` bytes at DATA for each (rcx, rdx) pair (rax their
    xor, rbp DATA), interpreted and translated at once."""
    runs = {}
    for translate_after in (None, 0):
        memory, cpu = long_mode_cpu(code)
        cpu.translate_after = translate_after
        out = []
        for a, b in pairs:
            cpu.set_registers({"rip": CODE, "rcx": a, "rdx": b, "rax": a ^ b, "rbp": DATA,
                               "rflags": 0x202})
            assert cpu.run(100).reason == StopReason.HLT
            out.append(memory.read(DATA, size))
        runs[translate_after] = out
    return runs[None], runs[0]


@pytest.mark.parametrize("setter", _SETTER_FORMS)
def test_a_rotate_keeps_the_other_flags_of_every_setter(setter):
    # ror changes CF and OF only: SF/ZF/AF/PF are the setter's, which the translator
    # computes in line from the setter's operands (adc/sbb through CpuState).
    code = assemble(f"{setter}\nror $3, %rax\npushfq\npopq (%rbp)\nhlt")
    interpreted, translated = _stores_both_ways(code, [(a, b) for a in _EDGES for b in _EDGES], 8)
    assert translated == interpreted


@pytest.mark.parametrize("setter, in_line", [("add %rcx, %rdx", True), ("subl %ecx, %edx", True),
                                             ("xor %cl, %dl", True), ("incw %dx", True),
                                             ("adc %rcx, %rdx", False)])
def test_flags_before_a_rotate_need_no_call(setter, in_line):
    source = _translated_source(f"{setter}\nrol $5, %rax\nhlt", 2)
    assert ("materialize(s)" not in source) == in_line


@pytest.mark.parametrize("setter", ["addl %ecx, %edx", "cmpl $5, %edx", "test %cl, %dl", "decw %dx"])
def test_setcc_and_cmovcc_after_a_setter_need_no_test(setter):
    # PyPy's JIT makes a test a guard, and on random data (bignum carries) a bridge: the
    # condition is computed as a bit instead (adc/sbb sources keep the test).
    source = _translated_source(f"{setter}\nsetb %al\ncmovl %rcx, %rbx\nsetnp %ah\nhlt", 4)
    body = source.split("except GuestFault")[0]
    assert " if " not in body


@pytest.mark.parametrize("setter", _SETTER_FORMS[::3] + ["stc", "clc\nstd", "rol $1, %rdx"])
def test_pushf_after_a_flag_setter(setter):
    # pushf makes the translator build all of RFLAGS from whatever lazy state it holds.
    code = assemble(f"{setter}\npushfq\npopq (%rbp)\npushfw\npopw 8(%rbp)\ncld\nhlt")
    pairs = [(a, b) for a in _EDGES[::2] for b in _EDGES[1::2]]
    interpreted, translated = _stores_both_ways(code, pairs, 10)
    assert translated == interpreted


def test_chained_successor_rewritten_by_another_block_is_retranslated():
    # The loop's blocks are chained after the first iterations; a store from one block
    # rewrites the immediate in its successor, which must run the new code from then on.
    src = """
        mov $6, %ecx
        xor %eax, %eax
    top:
        cmp $3, %ecx
        jne 1f
        movb $100, target+1(%rip)
    1:  jmp target
    target:
        mov $1, %edx
        add %rdx, %rax
        dec %ecx
        jnz top
        hlt"""
    code = assemble(src)
    interpreted = _state(*_run(code, {}, None))
    memory, cpu, result = _run(code, {}, 0)
    assert _state(memory, cpu, result) == interpreted
    assert cpu.registers()["rax"] == 3 * 1 + 3 * 100


_JUMPS = """
    mov $7, %ecx
1:  add %rcx, %rax
    jmp 2f
    .byte 0x0f, 0x0b          # ud2: never runs
2:  xor %rax, %rdx
    jmp 3f
    .fill 40, 1, 0x90
3:  dec %ecx
    jnz 1b
    hlt
"""


def test_forward_jumps_in_a_page_extend_the_block():
    memory, cpu = long_mode_cpu(assemble(_JUMPS))
    cpu.translate_after = 0
    run_to_hlt(cpu)
    loop = [block for block in cpu.blocks.values() if block.rip != CODE]
    assert len(loop) == 2  # the loop body and the hlt
    body = max(loop, key=lambda block: block.size)
    assert [i.spec.name for i in body.insns] == ["alu_rm_r", "jmp_rel", "alu_rm_r", "jmp_rel",
                                                 "dec_rm", "jcc"]


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5, 6, 9, 23, 1000])
def test_blocks_through_jumps_stop_exactly_at_the_budget(budget):
    code = assemble(_JUMPS)
    interpreted = _state(*_run(code, {"rdx": 5}, None, budget=budget))
    translated = _state(*_run(code, {"rdx": 5}, 0, budget=budget))
    assert translated == interpreted
    assert translated[1] == min(budget, 1 + 7 * 6 + 1)


def test_a_fault_after_a_jump_reports_the_instruction_past_the_jump():
    code = assemble("inc %rsi\njmp 1f\nnop\n1: mov (%rbx), %rax\nhlt")
    regs = {"rbx": UNMAPPED, "rsi": 1}
    interpreted = _state(*_run(code, regs, None))
    translated = _state(*_run(code, regs, 0))
    assert translated == interpreted
    assert translated[2]["r15"] == 14 and translated[2]["rsi"] == 2


_CALLS = """
    mov $3, %ecx
1:  call far_away
    add %rax, %rdx
    dec %ecx
    jnz 1b
    hlt
    .fill 5000, 1, 0xcc
far_away:
    inc %rax
    jmp 2f
    .byte 0x0f, 0x0b
2:  ret
"""


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 8, 13, 1000])
def test_calls_into_another_page_stay_in_the_block(budget):
    code = assemble(_CALLS)
    interpreted = _state(*_run(code, {"rax": 4}, None, budget=budget))
    memory, cpu, result = _run(code, {"rax": 4}, 0, budget=budget)
    assert _state(memory, cpu, result) == interpreted
    if budget == 1000:
        assert cpu.registers()["rdx"] == 5 + 6 + 7
        names = [[i.spec.name for i in block.insns] for block in cpu.blocks.values()]
        assert ["call_rel", "inc_rm", "jmp_rel", "ret_near"] in names


def test_a_block_through_a_remapped_page_is_rebuilt():
    # The loop calls into the second 2 MiB page; remapping that page must run the new callee
    # although the calling block (found by its own, unchanged physical address) is cached.
    code = assemble("call 0x201000 - 0x10000 + .\nhlt")
    memory, cpu = long_mode_cpu(code, ram=8 * 1024 * 1024)
    memory.write(0x201000, assemble("mov $1, %eax\nret"))
    memory.write(0x601000, assemble("mov $2, %eax\nret"))
    cpu.translate_after = 0
    run_to_hlt(cpu)
    assert cpu.registers()["rax"] == 1
    memory.write_u64(0x3000 + 8, 0x600000 | 0x87)  # PD[1] -> physical 6 MiB
    cpu.set_registers({"rip": CODE, "rsp": 0x80000})  # flushes the TLB, keeps the blocks
    run_to_hlt(cpu)
    assert cpu.registers()["rax"] == 2


class _FixedTsc:
    def __init__(self, value: int) -> None:
        self.value = value

    def read(self) -> int:
        return self.value


@pytest.mark.parametrize("translate_after", [None, 0])
def test_rdtsc_in_a_translated_block_reads_the_machine_tsc(translate_after):
    memory, cpu = long_mode_cpu(assemble("mov $5, %rbx\nrdtsc\nadd %rax, %rbx\nmov %rdx, %rcx\nhlt"))
    cpu.translate_after = translate_after
    cpu.tsc = _FixedTsc(0x1234_5678_9ABC_DEF0)
    cpu.set_registers({"rax": 0xFFFF_FFFF_FFFF_FFFF, "rdx": 0xFFFF_FFFF_FFFF_FFFF})
    assert run_to_hlt(cpu).reason == StopReason.HLT
    regs = cpu.registers()
    assert (regs["rax"], regs["rdx"], regs["rbx"], regs["rcx"]) == (0x9ABC_DEF0, 0x1234_5678,
                                                                    0x9ABC_DEF5, 0x1234_5678)


@pytest.mark.parametrize("translate_after", [None, 0])
def test_rdtsc_with_cr4_tsd_outside_ring_0_raises_gp(translate_after):
    memory, cpu = long_mode_cpu(assemble("mov $5, %rbx\nrdtsc\nmov $7, %rbx\nhlt"))
    cpu.translate_after = translate_after
    cpu.tsc = _FixedTsc(1)
    cpu.s.cr4 |= 1 << 2
    cpu.s.cpl = 3  # only the check reads it: the code runs on from the flat test map
    run_to_hlt(cpu)
    regs = cpu.registers()
    assert regs["r15"] == 13 and regs["rbx"] == 5  # #GP before rdtsc retired


def test_bswap_and_fences_translate_like_the_interpreter():
    # bswap at 64 and 32 bits (and the 16-bit form: .byte 0x66, 0x0f, 0xc8 + r, undefined,
    # zero on current CPUs), lfence/mfence/sfence as no-ops; clflush stays with its handler.
    code = assemble("""
        bswap %rax
        bswap %r9d
        .byte 0x66, 0x0f, 0xcb
        lfence
        mfence
        sfence
        clflush 8(%rbp)
        bswap %rdx
        hlt""")
    regs = {"rax": 0x0102_0304_0506_0708, "r9": 0xAABB_CCDD_1122_3344, "rbx": 0x1111_2222_3333_4444,
            "rdx": 0x8000_0000_0000_00FF, "rbp": DATA}
    interpreted = _state(*_run(code, regs, None))
    translated = _state(*_run(code, regs, 0))
    assert translated == interpreted
    out = interpreted[2]
    assert out["rax"] == 0x0807_0605_0403_0201 and out["r9"] == 0x4433_2211
    assert out["rbx"] == 0x1111_2222_3333_0000 and out["rdx"] == 0xFF00_0000_0000_0080


@pytest.mark.parametrize("half", [0, 0xFFFF_FFFF_8000_0000])
def test_memory_at_page_and_ram_edges_translates_like_the_interpreter(half):
    # Reads, writes and read-modify-writes of 1, 2, 4 and 8 bytes: aligned (the fast path),
    # unaligned inside a page (CPython's typed views leave those to the MMU), straddling a
    # page, and at the last bytes of RAM; through the identity map and the kernel half, whose
    # addresses are negative in the register form.
    ram_end = 4 * 1024 * 1024  # long_mode_cpu's RAM
    lines = ["xor %r8, %r8"]
    for offset in (0x10000, 0x10003, 0x10FF8, 0x10FFC, 0x10FFD, 0x10FFF, ram_end - 8, ram_end - 5):
        lines.append(f"movabs ${(half + offset) & (2**64 - 1):#x}, %rbx")
        for suffix, src, dst in (("b", "dl", "cl"), ("w", "dx", "cx"), ("l", "edx", "ecx"), ("q", "rdx", "rcx")):
            if offset + {"b": 1, "w": 2, "l": 4, "q": 8}[suffix] > ram_end:
                continue
            lines += [f"mov{suffix} %{src}, (%rbx)", f"mov{suffix} (%rbx), %{dst}", "xor %rcx, %r8",
                      f"add{suffix} %{src}, (%rbx)", f"mov{suffix} (%rbx), %{dst}", "xor %rcx, %r8",
                      "rol $7, %r8", "rol $13, %rdx"]
    code = assemble("\n".join(lines + ["hlt"]))
    regs = {"rdx": 0x8877_6655_4433_2211, "rcx": 0}
    interpreted = _state(*_run(code, regs, None))
    translated = _state(*_run(code, regs, 0))
    assert translated == interpreted
    assert interpreted[0] == StopReason.HLT and interpreted[2]["r8"] != 0


def test_memory_above_the_mmio_hole_translates_like_the_interpreter():
    # RAM above 4 GiB is not in the MMU's low view: a translated access there takes the MMU's
    # path, whatever the TLB holds. The last 2 MiB page of the first GiB maps to 4 GiB.
    high = 1 << 32
    ram = 0xC000_0000 + 4 * 1024 * 1024  # 3 GiB below the hole, 4 MiB above it
    window = 0x3FE0_0000
    lines = ["xor %r8, %r8", f"mov ${window + 0x18:#x}, %ebx"]
    for suffix, src, dst in (("b", "dl", "cl"), ("w", "dx", "cx"), ("l", "edx", "ecx"), ("q", "rdx", "rcx")):
        lines += [f"mov{suffix} %{src}, (%rbx)", f"add{suffix} %{src}, (%rbx)",
                  f"mov{suffix} (%rbx), %{dst}", "xor %rcx, %r8", "rol $7, %r8", "add $8, %rbx"]
    code = assemble("\n".join(lines + ["hlt"]))

    def run(translate_after):
        memory, cpu = long_mode_cpu(code, {"rdx": 0x8877_6655_4433_2211, "rcx": 0}, ram=ram)
        memory.write_u64(0x3000 + 8 * 511, high | 0x87)
        cpu.translate_after = translate_after
        result = cpu.run(1000)
        return result.reason, cpu.registers()["r8"], memory.read(high + 0x18, 32)

    interpreted = run(None)
    assert run(0) == interpreted
    assert interpreted[0] == StopReason.HLT
    assert interpreted[2][24:] == (2 * 0x8877_6655_4433_2211 % 2**64).to_bytes(8, "little")


@pytest.mark.parametrize("suffix, acc", [("b", "al"), ("w", "ax"), ("l", "eax"), ("q", "rax")])
@pytest.mark.parametrize("matches", [True, False])
def test_lock_cmpxchg_on_memory_translates_like_the_interpreter(suffix, acc, matches):
    # Success: the source goes to memory, the accumulator (and its upper half) is left alone;
    # failure: memory keeps its value, the accumulator gets it (a 32-bit one zero-extended).
    # The jne and the pushf read the flags of cmp accumulator, destination.
    code = assemble(f"""
        mov (%rbp), %rbx
        lock cmpxchg{suffix} %{ {'b': 'cl', 'w': 'cx', 'l': 'ecx', 'q': 'rcx'}[suffix]}, 8(%rbp)
        jne 1f
        inc %rsi
    1:  pushf
        pop %rdi
        hlt""")
    data = (0x1111_2222_3333_4444).to_bytes(8, "little") + (0x8877_6655_4433_2211).to_bytes(8, "little")
    rax = 0xFFFF_FFFF_0000_0000 | (0x4433_2211 if matches else 0x1234)
    if matches and suffix == "q":
        rax = 0x8877_6655_4433_2211
    elif matches:
        rax = (rax & ~{"b": 0xFF, "w": 0xFFFF, "l": 0xFFFF_FFFF}[suffix]) | (
            0x8877_6655_4433_2211 & {"b": 0xFF, "w": 0xFFFF, "l": 0xFFFF_FFFF}[suffix])
    regs = {"rax": rax, "rcx": 0xCAFE_F00D_DEAD_BEEF, "rbp": DATA}
    interpreted = _state(*_run(code, regs, None, data=data))
    translated = _state(*_run(code, regs, 0, data=data))
    assert translated == interpreted
    assert interpreted[2]["rsi"] == (1 if matches else 0)
    assert (interpreted[3][8:16] != data[8:16]) == matches


# After a bit test: CF read back by jc, the other flags (the cmp's before) by jz and pushf.
_BIT_FLAGS_READBACK = """
        jc 1f
        inc %rsi
    1:  jz 2f
        inc %rdi
    2:  pushf
        pop %r10
        hlt"""


@pytest.mark.parametrize("op", ["bt", "bts", "btr", "btc"])
@pytest.mark.parametrize("suffix, reg, offset_reg", [("w", "dx", "cx"), ("l", "edx", "ecx"), ("q", "rdx", "rcx")])
def test_bit_test_family_translates_like_the_interpreter(op, suffix, reg, offset_reg):
    # CF gets the bit, the other flags stay those of the cmp before (read back by pushf and
    # by a jc/jz); immediate offsets on a register and on memory, a register offset (taken
    # modulo the operand size) on a register. Register offsets into memory: the next test.
    code = assemble(f"""
        cmp %rax, %rbx
        {op}{suffix} $35, %{reg}
        setc %r8b
        {op}{suffix} $6, 8(%rbp)
        setc %r9b
        {op}{suffix} %{offset_reg}, %{reg}
        {_BIT_FLAGS_READBACK}""")
    data = bytes(8) + (0x5A5A_5A5A_5A5A_5A5A).to_bytes(8, "little")
    for rax, rcx in ((5, 0x47), (7, 0x31)):
        regs = {"rax": rax, "rbx": 5, "rcx": rcx, "rdx": 0x8000_0008_F0F0_00FF, "rbp": DATA}
        interpreted = _state(*_run(code, regs, None, data=data))
        translated = _state(*_run(code, regs, 0, data=data))
        assert translated == interpreted


@pytest.mark.parametrize("op", ["bt", "bts", "btr", "btc"])
@pytest.mark.parametrize("suffix, offset_reg", [("w", "cx"), ("l", "ecx"), ("q", "rcx")])
def test_register_bit_offsets_into_memory_translate_like_the_interpreter(op, suffix, offset_reg):
    # The offset, signed at the operand size, moves the operand by whole operands, either
    # way and past it (Linux's test_bit/set_bit on bitmaps); the bits above the operand
    # size of the offset register do not count. The flags of the cmp before stay but CF.
    code = assemble(f"""
        cmp %rax, %rbx
        {op}{suffix} %{offset_reg}, (%rbp)
        setc %r8b
        {op}{suffix} %{offset_reg}, 8(%rbp)
        {_BIT_FLAGS_READBACK}""")
    data = bytes(range(256))
    changed = False
    for rcx in (0, 5, 70, 300, -1, -200, 0xFFFF_FFFF_0000_0046, 0xFFFF_FFF0):
        regs = {"rax": 5, "rbx": 5, "rcx": rcx & 0xFFFF_FFFF_FFFF_FFFF, "rbp": DATA + 128}
        interpreted = _state(*_run(code, regs, None, data=data))
        translated = _state(*_run(code, regs, 0, data=data))
        assert translated == interpreted, f"offset {rcx:#x}"
        bits = {"w": 16, "l": 32, "q": 64}[suffix]
        signed = (rcx + (1 << (bits - 1))) % (1 << bits) - (1 << (bits - 1))
        # Offsets near the bitmap stay in it; the rest reach an unmapped page, both ways.
        assert interpreted[2]["r15"] == (0 if abs(signed) < 1024 else 14), f"offset {rcx:#x}"
        changed |= interpreted[3] != data
    assert changed == (op != "bt")
    source = _translated_source(f"{op}{suffix} %{offset_reg}, (%rdi)\nhlt", 1)
    assert "H0(cpu" not in source


def test_a_register_bit_offset_on_an_indexed_address_past_the_machine_word():
    # base + index*8 + disp is 2**64 + DATA + 8 before it wraps, and the offset (64 bits)
    # moves it 8 bytes on: the sum leaves the machine word before the fold (PyPy's wrapping
    # int_add raised OverflowError on it; the KVM differential test found the form).
    code = assemble(f"btsq %r14, {DATA + 9:#x}(%r11,%rsi,8)\nhlt")
    regs = {"r11": 0x7FFF_FFFF_FFFF_FFFF, "rsi": 0x1000_0000_0000_0000, "r14": 64}
    interpreted = _state(*_run(code, regs, None))
    translated = _state(*_run(code, regs, 0))
    assert translated == interpreted
    assert translated[2]["r15"] == 0 and translated[3][16] == 1  # bit 0 of DATA + 16


def test_a_register_bit_offset_to_an_unmapped_page_faults_like_the_interpreter():
    code = assemble("add $1, %rdx\nbts %rcx, (%rbp)\nhlt")
    regs = {"rcx": 1 << 40, "rdx": 7, "rbp": DATA}  # 128 GiB on: past the mapped first GiB
    interpreted = _state(*_run(code, regs, None))
    translated = _state(*_run(code, regs, 0))
    assert translated == interpreted
    assert translated[2]["r15"] == 14 and translated[2]["rdx"] == 8


@pytest.mark.parametrize("suffix, src", [("b", "cl"), ("w", "cx"), ("l", "ecx"), ("q", "rcx")])
def test_xadd_translates_like_the_interpreter(suffix, src):
    # Memory (the kernel's lock xadd) and register forms, one register as both operands
    # (the sum stays), and the flags of the add read back by jc and pushf.
    acc = {"b": "al", "w": "ax", "l": "eax", "q": "rax"}[suffix]
    code = assemble(f"""
        lock xadd{suffix} %{src}, 8(%rbp)
        jnc 1f
        inc %rsi
    1:  xadd{suffix} %{src}, %{acc}
        xadd{suffix} %{acc}, %{acc}
        pushf
        pop %rdi
        hlt""")
    data = bytes(8) + (0xFFFF_FFFF_FFFF_FFF0).to_bytes(8, "little")
    regs = {"rax": 0x8000_0000_8000_8080, "rcx": 0x1234_5678_9ABC_DEF1, "rbp": DATA}
    interpreted = _state(*_run(code, regs, None, data=data))
    translated = _state(*_run(code, regs, 0, data=data))
    assert translated == interpreted
    assert interpreted[3][8:16] != data[8:16]  # memory got the sum
    assert interpreted[2]["rcx"] != regs["rcx"]  # the source register got the old value


def test_cli_leave_and_selector_reads_translate_like_the_interpreter():
    # cli clears IF (read back by pushf); leave restores RSP from RBP and pops RBP; mov from a
    # segment register zero-extends into a 32/64-bit register, merges into a 16-bit one and
    # stores 16 bits to memory.
    code = assemble("""
        push %rbp
        mov %rsp, %rbp
        sub $64, %rsp
        movq $-1, %rax
        movq $-1, %rbx
        movq $-1, %rcx
        mov %ss, %eax
        mov %cs, %rbx
        mov %ds, %cx
        movq $-1, 8(%rsp)
        mov %ss, 8(%rsp)
        mov 8(%rsp), %rdx
        cli
        pushf
        pop %rsi
        leave
        hlt""")
    regs = {"rbp": 0x1122_3344_5566_7788, "rflags": 0x202}
    interpreted = _state(*_run(code, regs, None))
    translated = _state(*_run(code, regs, 0))
    assert translated == interpreted
    out = interpreted[2]
    assert out["rax"] == 0x10 and out["rbx"] == 0x08 and out["rcx"] == 0xFFFF_FFFF_FFFF_0010
    assert out["rdx"] == 0xFFFF_FFFF_FFFF_0010
    assert not out["rsi"] & 0x200 and not out["rflags"] & 0x200
    assert out["rbp"] == regs["rbp"] and out["rsp"] == STACK_TOP


def test_cli_at_cpl3_without_iopl_raises_gp_when_translated():
    memory, cpu = long_mode_cpu(assemble("mov $5, %ebx\ncli\nmov $6, %ebx\nhlt"))
    cpu.s.cpl = 3
    cpu.translate_after = 0
    cpu.run(1000)
    regs = cpu.registers()
    assert regs["r15"] == 13 and regs["rbx"] == 5  # #GP before cli retired


@pytest.mark.parametrize("translate_after", [None, 0])
def test_whole_blocks_finish_the_block_the_budget_ends_in(translate_after):
    """run(n, whole_blocks=True) never stops inside a block: it stops at the first block
    boundary at or past n, where run(n) stops at n exactly."""
    code = assemble("1: inc %rax\ninc %rbx\ninc %rcx\ninc %rdx\njmp 1b")  # blocks of 5
    for budget in (1, 3, 5, 7, 12):
        _memory, cpu, result = _run(code, {}, translate_after, budget=budget)
        assert result.instructions == budget
        memory, cpu = long_mode_cpu(code, {})
        cpu.translate_after = translate_after
        result = cpu.run(budget, whole_blocks=True)
        assert result.reason == StopReason.BUDGET
        assert result.instructions == -(-budget // 5) * 5, budget
        assert cpu.registers()["rip"] == CODE  # at the loop head: a block boundary


def test_flag_locals_nothing_reads_are_pruned_in_rounds():
    from pyhv.accel.tcg.flagprune import prune_flag_locals

    source = "\n".join([
        "    fa1 = r0",                # read by fr1 only, which dies: dies in round 2
        "    fr1 = (fa1 + 1) & 0xff",  # never read: dies in round 1
        "    fa2 = r1",
        "    fr2 = fa2 ^ 0x1fa2",      # 0x1fa2 names no flag local
        "    if fr2 >> 63: fr2 -= 1",  # part of defining fr2, not a read of it
        "    fc3 = fc3 + fr2",         # its own name on its line is not a read
        "    s.cc_res = fc3",
        "    fq4 = 0xfa9",             # a hex literal with fa9 in it reads nothing
        "    x_fq4 = 1",               # fq4 inside another name is not a read of it
    ])
    kept = prune_flag_locals(source).split("\n")
    assert kept == [
        "    fa2 = r1",
        "    fr2 = fa2 ^ 0x1fa2",
        "    if fr2 >> 63: fr2 -= 1",
        "    fc3 = fc3 + fr2",
        "    s.cc_res = fc3",
        "    x_fq4 = 1",
    ]
    assert prune_flag_locals("    s.cc_a = fa0\n    fa0 = 1") == "    s.cc_a = fa0\n    fa0 = 1"


# Linear 2-4 MiB through 4 KiB pages out of order: page n at physical page 5n mod 511 of that
# range, so linear neighbours are never physical ones and an access that a page hint wrongly
# serves lands in the wrong page. Page READ_ONLY is present but not writable (CR0.WP is set).
SCATTERED = 0x200000
READ_ONLY = 100


def _scattered_run(code: bytes, regs: dict, translate_after: Optional[int]):
    memory, cpu = long_mode_cpu(code, regs)
    table = 0x3FF000  # the 512th page, outside the permutation
    for n in range(511):
        flags = 0x5 if n == READ_ONLY else 0x7
        memory.write_u64(table + 8 * n, (SCATTERED + (5 * n % 511) * 4096) | flags)
    memory.write_u64(0x3000 + 8, table | 0x7)  # PD entry 1: linear 2-4 MiB
    for n in range(511):  # each quadword: its linear page number and offset
        words = array.array("Q", [(n << 16) | (8 * q) for q in range(512)])
        memory.write(SCATTERED + (5 * n % 511) * 4096, words.tobytes())
    cpu.set_registers({"cr0": cpu.registers()["cr0"] | (1 << 16)})
    cpu.translate_after = translate_after
    result = cpu.run(10_000)
    return (result.reason, result.instructions, cpu.registers(),
            memory.read(SCATTERED, 511 * 4096))


def _page(n: int) -> int:
    return SCATTERED + n * 4096


@pytest.mark.parametrize("start", [_page(10) + 0x10, _page(10) + 0x8, _page(10)])
def test_pushes_and_pops_across_a_page_translate_like_the_interpreter(start):
    # Eight pushes from near a page's start cross into the page below; the pops, a call
    # and a ret come back across it. The block serves most of them through page hints.
    pushes = ["push %rax", "push %rbx", "push %rcx", "pushw $0x1234", "push %rdx", "push %rsi",
              "push %rdi", "push $-7"]
    pops = ["pop %r8", "pop %r9", "pop %r10", "pop %r11", "popw %r12w", "pop %r13", "pop %r14",
            "pop %r15"]
    code = assemble("\n".join(pushes + ["call 1f", "jmp 2f", "1:", "push %rbp", "pop %rbp",
                                        "ret", "2:"] + pops + ["hlt"]))
    regs = {"rsp": start, "rax": 1, "rbx": 2, "rcx": 3, "rdx": 4, "rsi": 5, "rdi": 6,
            "rbp": 0x5555, "r12": 0}
    interpreted = _scattered_run(code, regs, None)
    translated = _scattered_run(code, regs, 0)
    assert translated == interpreted
    out = interpreted[2]
    assert interpreted[0] == StopReason.HLT and out["rsp"] == start
    assert [out[r] for r in ("r8", "r9", "r10", "r11", "r13", "r14", "r15")] == [
        2**64 - 7, 6, 5, 4, 3, 2, 1]
    assert out["r12"] == 0x1234


def _field_reads() -> List[str]:
    sized = {"q": "rax", "l": "eax", "w": "ax", "b": "al"}
    lines = []
    for disp, suffix in ((0, "q"), (8, "q"), (0x10, "q"), (0x18, "l"), (-8, "q"), (-0xFF0, "q"),
                         (-0xFF8, "q"), (0x14, "w"), (0x17, "b"), (0xC, "q"), (0xC, "l"),
                         (0x1010, "q"), (0x1008, "q"), (0xD, "q"), (0x5, "l"), (-0xFF8, "q")):
        lines += [f"mov{suffix} {disp:#x}(%rbx), %{sized[suffix]}", "xor %rax, %r8", "rol $5, %r8"]
    return lines


_FIELD_WRITES = [
    "movq (%rbx), %r8", "addq %r8, 8(%rbx)", "incq 0x10(%rbx)", "addl $3, 0x18(%rbx)",
    "notq 0x20(%rbx)", "movw %r8w, 0x1E(%rbx)", "movb %r8b, 0x11(%rbx)", "movq %r8, -8(%rbx)",
    "add $0x20, %rbx", "movq (%rbx), %r10", "movq -0x18(%rbx), %r11", "sub $0x1000, %rbx",
    "movq %r10, 8(%rbx)", "movq -0x1000(%rbx), %r12", "sub $0x20, %rbx", "movq -0x10(%rbx), %r13",
    "add $0x40, %rbx", "movq -0x60(%rbx), %r14", "movq 0x100(%rbx), %rcx", "sub $0x40, %rbx",
    "movq 0x140(%rbx), %rdx", "add $0x80, %rbx", "movq 0xC0(%rbx), %rsi"]


@pytest.mark.parametrize("body", [_field_reads(), _FIELD_WRITES], ids=["reads", "writes"])
def test_accesses_through_one_base_register_across_pages_translate_like_the_interpreter(body):
    # Fields of one structure at growing and shrinking displacements, of every size, aligned
    # and not, crossing page edges both ways; a read that straddles a page (the MMU's path)
    # before one a hint would serve; read-modify-writes; the register moved by constants.
    # Each body is one block.
    code = assemble("\n".join([f"mov ${_page(20) + 0xFF0:#x}, %rbx", "xor %r8, %r8"] + body
                              + ["hlt"]))
    interpreted = _scattered_run(code, {"rax": 0}, None)
    translated = _scattered_run(code, {"rax": 0}, 0)
    assert translated == interpreted
    assert interpreted[0] == StopReason.HLT and interpreted[2]["r8"] != 0


def test_a_write_after_reads_of_a_read_only_page_faults_when_translated():
    # The reads leave a hint from the read TLB; the write through the same register must
    # still find the page read-only: #PF with W=1, the write not done.
    base = _page(READ_ONLY) + 0x100
    code = assemble("\n".join([f"mov ${base:#x}, %rbx", "mov (%rbx), %rax", "mov 8(%rbx), %rcx",
                               "movq $5, 16(%rbx)", "hlt"]))
    interpreted = _scattered_run(code, {"r15": 0}, None)
    translated = _scattered_run(code, {"r15": 0}, 0)
    assert translated == interpreted
    out = interpreted[2]
    assert out["r15"] == 14 and out["cr2"] == base + 16


def test_pushes_are_served_by_page_hints():
    # The first push looks the page up; the next three add to its physical address, and
    # call a helper only where that test fails.
    source = _translated_source(".intel_syntax noprefix\npush rax\npush rbx\npush rcx\npush rdx", 4)
    assert source.count("W.get") == 1
    assert source.count("if h4 >= 0 and (h4 & 4095) >= 8:") == 3
    assert source.count("ph = MW8(a, ") == 3


def test_serialize_runs_and_its_neighbours_in_0f01_5_are_invalid():
    # serialize (advertised in CPUID.7.0:EDX) does nothing visible, translated or not; the
    # other encodings of 0F 01 /5 (prefixed, other register forms, memory) raise #UD.
    code = assemble("mov $5, %eax\n.byte 0x0f, 0x01, 0xe8\nadd $1, %eax\n.byte 0x0f, 0x01, 0xe8\nhlt")
    for translate_after in (None, 0):
        memory, cpu, result = _run(code, {"r15": 0}, translate_after)
        assert result.reason == StopReason.HLT and cpu.registers()["rax"] == 6
        assert cpu.registers()["r15"] == 0
    for bad in ("0xf3, 0x0f, 0x01, 0xe8", "0x66, 0x0f, 0x01, 0xe8", "0x0f, 0x01, 0xe9",
                "0x0f, 0x01, 0x28"):
        for translate_after in (None, 0):
            _, cpu, _ = _run(assemble(f"mov $5, %eax\n.byte {bad}\nhlt"), {"r15": 0},
                             translate_after)
            assert cpu.registers()["r15"] == 6, bad  # #UD

"""The harness itself, without KVM: generator, assembler, image, comparison rules."""

from __future__ import annotations

import pytest

from pyhv.testing.assemble import AssemblyError, assemble_many, assembler_missing
from pyhv.testing.differential import RF, compare, known_divergence
from pyhv.testing.layout import COMPARED_REGIONS, DATA, GUARD, handler_address, vector_of_stop
from pyhv.testing.outcome import Outcome
from pyhv.testing.snippets import AF, CF, OF, Snippet, generate, seeded_image, shift_undefined
from pyhv.testing.tcg_runner import TcgRunner

needs_as = pytest.mark.skipif(bool(assembler_missing()), reason=f"needs GNU as: {assembler_missing()}")
MEMORY_SIZE = sum(size for _, size in COMPARED_REGIONS)


def test_same_seed_same_snippets_other_seed_others():
    assert generate(5, 200) == generate(5, 200)
    assert [s.asm for s in generate(5, 200)] != [s.asm for s in generate(6, 200)]


def test_generator_covers_the_instruction_families():
    text = "\n".join(s.asm for s in generate(11, 3000))
    for word in ("adc", "sbb", "cmp", "test", "neg", "not", "inc", "rcl", "rcr", "sar", "shld",
                 "shrd", "mul", "idiv", "bts", "btc", "bsf", "bsr", "set", "cmov", "xchg",
                 "cmpxchg", "xadd", "movz", "movs", "movslq", "movsxd", "lea", "bswap", "push",
                 "pop", "pushf", "popf", "rep movs", "repne scas", "repe cmps", "stos", "lods",
                 "lock", "addr32", "ud2", "%ah", "%r15b", "%cl,", "{load}"):
        assert word in text, word


@needs_as
def test_every_generated_snippet_assembles():
    snippets = generate(12, 2000)
    codes = assemble_many([s.asm for s in snippets])
    assert len(codes) == len(snippets) and all(codes)


@needs_as
def test_assembler_error_names_the_snippet():
    with pytest.raises(AssemblyError, match=r"snippet 1 \('addq %rax, %ah'\)"):
        assemble_many(["nop", "addq %rax, %ah", "nop"])


def test_image_is_seeded_and_patched():
    snippet = Snippet("nop", {}, 2, 99, ((DATA + 0xFFE, b"\x11\x22\x33\x44"),))
    first, second = seeded_image(snippet), seeded_image(snippet)
    assert first == second
    assert first[DATA][0xFFE:0x1002] == b"\x11\x22\x33\x44"
    assert seeded_image(snippet._replace(image_seed=100))[DATA][:64] != first[DATA][:64]


@pytest.mark.parametrize("op,size,count,undefined,result_undefined", [
    ("shl", 4, 0, 0, False), ("shl", 4, 32, 0, False),  # masked to 0: nothing changes
    ("shl", 4, 1, AF, False), ("sar", 1, 3, AF | OF, False), ("shr", 1, 9, AF | OF | CF, False),
    ("sar", 1, 9, AF | OF, False), ("rol", 2, 1, 0, False), ("rcr", 1, 9, OF, False),
    ("shld", 2, 17, 0x8D5, True), ("shrd", 2, 16, AF | OF, False), ("shld", 8, 65, AF, False),
])
def test_shift_undefined_flags(op, size, count, undefined, result_undefined):
    assert shift_undefined(op, size, count) == (undefined, result_undefined)


def _outcome(**changes) -> Outcome:
    base = Outcome(tuple(range(16)), 0x10004, 0x2, -1, -1, 0, bytes(MEMORY_SIZE))
    return base._replace(**changes)


SNIPPET = Snippet("addl %eax, %ebx", {}, 2, 0, (), undefined_flags=AF)


def test_compare_reports_registers_flags_and_memory():
    assert compare(SNIPPET, _outcome(), _outcome()) == []
    regs = list(range(16))
    regs[3] = 99
    memory = bytearray(MEMORY_SIZE)
    memory[5] = 1
    differences = compare(SNIPPET, _outcome(), _outcome(regs=tuple(regs), rflags=0x3,
                                                         memory=bytes(memory)))
    assert differences[0] == "rbx: kvm 0x3, tcg 0x63"
    assert differences[1].startswith("rflags: kvm 0x2, tcg 0x3")
    assert differences[2].startswith(f"memory at {DATA + 5:#x}")


def test_undefined_flags_and_registers_are_not_compared():
    assert compare(SNIPPET, _outcome(), _outcome(rflags=0x2 | AF)) == []
    masked = SNIPPET._replace(undefined_regs=("rax",))
    assert compare(masked, _outcome(), _outcome(regs=(7,) + tuple(range(1, 16)))) == []
    high = SNIPPET._replace(undefined_high_regs=("rax",))
    assert compare(high, _outcome(), _outcome(regs=(1 << 40,) + tuple(range(1, 16)))) == []
    assert compare(high, _outcome(), _outcome(regs=(1,) + tuple(range(1, 16)))) != []


def test_rf_is_ignored_only_in_a_fault_frame():
    fault = dict(vector=14, error_code=2, cr2=GUARD)
    assert compare(SNIPPET, _outcome(rflags=0x2 | RF, **fault), _outcome(**fault)) == []
    assert compare(SNIPPET, _outcome(rflags=0x2 | RF), _outcome()) != []


def test_split_store_bytes_below_cr2_are_not_compared():
    fault = dict(vector=14, error_code=2, cr2=GUARD)
    partial = bytearray(MEMORY_SIZE)
    partial[GUARD - DATA - 4:GUARD - DATA] = b"\xAA" * 4
    assert compare(SNIPPET, _outcome(memory=bytes(partial), **fault), _outcome(**fault)) == []
    read_fault = dict(fault, error_code=0)
    assert compare(SNIPPET, _outcome(memory=bytes(partial), **read_fault), _outcome(**read_fault)) != []


def test_vector_mismatch_and_backend_failure_are_divergences():
    assert compare(SNIPPET, _outcome(vector=13, error_code=0), _outcome()) == ["vector: kvm 13, tcg none"]
    crashed = Outcome((), 0, 0, -1, -1, 0, b"", "software CPU raised KeyError")
    assert compare(SNIPPET, _outcome(), crashed) == ["software CPU raised KeyError"]


def test_known_divergence_is_classified():
    kvm, tcg = _outcome(vector=12, error_code=0), _outcome(vector=13, error_code=0)
    assert known_divergence(SNIPPET, kvm, tcg).startswith("#SS(0)")
    assert known_divergence(SNIPPET, _outcome(), _outcome(vector=13, error_code=0)) == ""


def test_handler_addresses_name_their_vector():
    assert vector_of_stop(handler_address(14) + 1) == 14
    assert vector_of_stop(handler_address(0)) == -1
    assert vector_of_stop(0x10005) == -1


def test_software_cpu_runner_reports_a_fault_through_the_frame():
    runner = TcgRunner()
    try:
        out = runner.run(b"\x48\x8b\x03\xf4", {"rbx": GUARD + 8, "rsp": 0x2F800}, 0x2, {})  # mov (%rbx), %rax
    finally:
        runner.close()
    assert (out.vector, out.error_code, out.cr2, out.rip) == (14, 0, GUARD + 8, 0x10000)
    assert out.regs[4] == 0x2F800  # RSP from the frame, not the IST stack

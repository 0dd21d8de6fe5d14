"""Translating blocks in a helper process (pyhv.accel.tcg.compiler): the code it sends back is
what ``generate_block`` and ``compile_block`` make here, its constants are rebuilt from the
vCPU's own instructions, its code cache entries reach the vCPU's cache, the vCPU interprets a
block until its code arrives, and a helper that fails, dies or lies is given up for translating
in the vCPU thread, never trusted."""

from __future__ import annotations

import logging
import marshal
import os
import pickle
import signal
import threading
from typing import List, Optional

import pytest

from pyhv.accel.tcg import compiler as compiler_module
from pyhv.accel.tcg import cpu as cpu_module
from pyhv.accel.tcg.codecache import CodeCache
from pyhv.accel.tcg.compiler import CompileHelper, compile_block, helper_wanted
from pyhv.accel.tcg.cpu import StopReason
from pyhv.accel.tcg.decoder import Insn, decode
from pyhv.accel.tcg import translate as translate_module
from pyhv.accel.tcg.translate import PendingBlock, block_consts, block_filename, generate_block
from pyhv.accel.tcg.translate_insns import EMITTERS
from pyhv.errors import ConfigError

from tests.tcg.harness import assemble, long_mode_cpu, needs_as
from tests.tcg.test_regions import LOOP
from tests.tcg.test_translate import DATA, _run, _state

LOW_END = 0x1000_0000
# mov rax, rcx; add rax, rbx (flags dead: the next add sets them); add rax, rdx; syscall (no
# emitter: it runs through its handler, so the block has H3 and I3 constants); then a region of
# two parts, the second looping to itself.
STRAIGHT = bytes.fromhex("4889c8" "4801d8" "4801d0" "0f05")


def _decoded(code: bytes, addr: int = 0x1000) -> List:
    insns, pos = [], 0
    while pos < len(code):
        insn = decode(code, pos, addr + pos, 64)
        insns.append(insn)
        pos += insn.length
    return insns


PARTS = [_decoded(STRAIGHT)]
NAME = block_filename(PARTS[0][0])


def _parts(k: int) -> List[List]:
    """A different block for each ``k``: add rax, imm32."""
    return [_decoded(bytes.fromhex("480510000000")[:2] + k.to_bytes(4, "little") + bytes.fromhex("0f05"))]


def _submit(helper: CompileHelper, parts=PARTS, name: str = NAME) -> Optional[int]:
    return helper.submit(parts, 64, LOW_END, name)


@pytest.fixture
def helper():
    helper = CompileHelper()
    yield helper
    helper.close()


def _lying(monkeypatch, prelude: str) -> None:
    """Have every helper run ``prelude`` (after importing pyhv) before it serves."""
    script = CompileHelper._script
    monkeypatch.setattr(CompileHelper, "_script", lambda self: script(self).replace(
        "from pyhv.accel.tcg.compiler import serve", prelude + "\nfrom pyhv.accel.tcg.compiler import serve"))


def _waited(helper: CompileHelper, token: int):
    done, translated = helper.result(token, wait=True)
    assert done
    return translated


def test_an_instruction_crosses_to_the_helper_whole():
    # lock add [rax+rcx*4+0x12345678], 0x7f; rep movsb; mov r8b, 0x80; call rel32; mov eax, [rip+8]
    insns = _decoded(bytes.fromhex("f0838488785634127f" "f3a4" "41b080" "e800010000" "8b0508000000"))
    for insn in insns:
        copy = pickle.loads(pickle.dumps(insn, 5))
        assert copy.spec is insn.spec and copy.handler is insn.handler
        assert [getattr(copy, name) for name in Insn.__slots__] == \
            [getattr(insn, name) for name in Insn.__slots__]


def test_the_helper_sends_back_what_is_made_here(helper):
    translated = _waited(helper, _submit(helper))
    source, filename, consts = generate_block(PARTS, 64, LOW_END, EMITTERS)
    assert filename == NAME and translated.code == compile_block(source, NAME)
    assert translated.names == tuple(consts) and "H3" in consts and "I3" in consts
    assert translated.key and translated.new and marshal.loads(translated.blob) == translated.code
    # Its dead flag locals are pruned, as here (the test can fail: they are there to prune).
    assert "fa1" in source and compile(source, NAME, "exec", dont_inherit=True) != translated.code


def test_the_constants_are_rebuilt_from_the_vcpus_own_instructions(helper):
    translated = _waited(helper, _submit(helper))
    consts = block_consts(translated.names, PARTS)
    assert consts["I3"] is PARTS[0][3] and consts["H3"] is PARTS[0][3].handler
    assert consts["ADDR"] == tuple(insn.addr for insn in PARTS[0])
    with pytest.raises(ValueError, match="'H9'"):
        block_consts(("H9",), PARTS)  # past the block's instructions
    with pytest.raises(ValueError, match="'os'"):
        block_consts(("os",), PARTS)


def test_a_reply_is_taken_without_waiting_once_it_arrived(helper):
    token = _submit(helper)
    _waited(helper, _submit(helper, _parts(1)))  # the helper answers in order
    done, translated = helper.result(token)
    assert done and translated is not None and translated.names == ("H3", "I3", "ADDR")


def test_a_block_the_helper_cannot_translate_is_left_to_translate_here(helper):
    token = _submit(helper, [[]])  # no instruction: generate_block fails in the helper
    assert helper.result(token, wait=True) == (True, None)
    assert helper.available  # a bad block is not a broken helper
    assert _waited(helper, _submit(helper)) is not None


def test_instructions_that_cannot_be_sent_are_translated_here(helper):
    insn = _decoded(STRAIGHT)[3]
    insn.handler = lambda cpu, i: None  # pickle cannot name a lambda
    assert _submit(helper, [[insn]]) is None
    assert helper.available and _waited(helper, _submit(helper)) is not None


def test_blocks_sent_faster_than_they_are_read_do_not_deadlock(helper):
    # Large regions, whose pickles fill the request pipe and whose code fills the reply pipe
    # long before 200 are sent; the helper then blocks on the replies and stops reading.
    regions = [[_decoded(bytes.fromhex("480510000000")[:2] + k.to_bytes(4, "little") * 1 + b"" +
                         bytes.fromhex("4801d8") * 250 + bytes.fromhex("0f05"))] for k in range(200)]
    tokens = []
    sender = threading.Thread(target=lambda: tokens.extend(_submit(helper, parts) for parts in regions))
    sender.start()
    sender.join(timeout=120)
    assert not sender.is_alive(), "submit blocked"
    assert len(tokens) == 200 and None not in tokens
    translated = [_waited(helper, token) for token in tokens]
    assert all(t is not None for t in translated)
    source, _, _ = generate_block(regions[-1], 64, LOW_END, EMITTERS)
    assert translated[-1].code == compile_block(source, NAME)


def test_a_dead_helper_is_given_up_with_one_warning(helper, caplog):
    _waited(helper, _submit(helper))
    helper._process.kill()
    helper._process.wait()
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
        token = _submit(helper)
        first = helper.result(token, wait=True) if token is not None else (True, None)
        assert first == (True, None)
        assert _submit(helper) is None
    assert not helper.available
    assert len([r for r in caplog.records if "compile helper failed" in r.getMessage()]) == 1


def test_a_stalled_helper_is_given_up_after_the_timeout(helper, monkeypatch, caplog):
    monkeypatch.setattr(compiler_module, "REPLY_TIMEOUT", 0.5)
    _waited(helper, _submit(helper))  # started
    process = helper._process
    os.kill(process.pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
            token = _submit(helper)
            outcome = []
            waiter = threading.Thread(target=lambda: outcome.append(helper.result(token, wait=True)),
                                      daemon=True)
            waiter.start()
            waiter.join(timeout=20)
            assert outcome == [(True, None)], "the wait for a stalled helper did not end"
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
    assert not helper.available and process.poll() is not None
    assert "no reply in 0.5 s" in caplog.text


def test_a_helper_with_another_decoder_table_is_given_up(monkeypatch, caplog):
    # Its instructions would name other specs: it must not start serving.
    monkeypatch.setattr(compiler_module, "SPECS", compiler_module.SPECS + [None])
    helper = CompileHelper()
    try:
        with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
            token = _submit(helper)
            assert token is None or helper.result(token, wait=True) == (True, None)
        assert not helper.available and "it exited" in caplog.text
    finally:
        helper.close()


def test_code_compiled_under_another_name_is_refused(helper, monkeypatch, caplog):
    _lying(monkeypatch, "import pyhv.accel.tcg.translate as t; g = t.generate_block\n"
                        "t.generate_block = lambda *a: (lambda r: (r[0], '<elsewhere>', r[2]))(g(*a))")
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
        assert helper.result(_submit(helper), wait=True) == (True, None)
    assert not helper.available
    assert "something other than the block's code" in caplog.text


@pytest.mark.parametrize("reply", [
    "([1], b'', '', (), b'', False)", "(0, 'not bytes', '', (), b'', False)", "'garbage'",
    "(0, b'', '', ('H0', 5), b'', False)", "(0, b'', '', (), b'', 1)"])
def test_a_malformed_reply_is_refused(helper, monkeypatch, caplog, reply):
    _lying(monkeypatch, f"import marshal, pyhv.accel.tcg.compiler as c\n"
                        f"c._encode_reply = lambda reply: marshal.dumps({reply})")
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
        assert helper.result(_submit(helper), wait=True) == (True, None)
    assert not helper.available and "malformed reply" in caplog.text


def test_replies_nobody_comes_back_for_are_bounded(helper, monkeypatch):
    monkeypatch.setattr(compiler_module, "MAX_UNCLAIMED", 4)
    tokens = [_submit(helper, _parts(k)) for k in range(10)]
    _waited(helper, tokens[-1])
    assert len(helper._replies) <= 4 and len(helper._pending) <= 4
    # An evicted reply's block is translated here; a kept one still gets its code.
    assert helper.result(tokens[0]) == (True, None)
    source, _, _ = generate_block(_parts(8), 64, LOW_END, EMITTERS)
    assert _waited(helper, tokens[-2]).code == compile_block(source, NAME)


def test_a_closed_helper_leaves_every_block_to_translate_here():
    helper = CompileHelper()
    token = _submit(helper)
    process = helper._process
    helper.close()
    assert process.poll() is not None  # ended, not left behind
    assert helper.result(token) == (True, None)
    assert _submit(helper) is None


def test_a_helper_with_blocks_enough_in_hand_leaves_the_next_to_the_vcpu(monkeypatch):
    _lying(monkeypatch, "import time, pyhv.accel.tcg.translate as t; g = t.generate_block\n"
                        "t.generate_block = lambda *a: time.sleep(0.2) or g(*a)")
    _, cpu = long_mode_cpu(STRAIGHT, {})
    translator = cpu.translator
    helper = translator.helper = CompileHelper()
    try:
        started = [translator.start_region(_parts(k), 64) for k in range(translate_module.HELPER_QUEUE + 1)]
        assert all(isinstance(p, PendingBlock) for p in started[:-1]) and callable(started[-1])
        assert helper.in_flight() == translate_module.HELPER_QUEUE
        assert callable(translator.finish(started[-2], wait=True))
        assert helper.in_flight() == 0  # replies that arrived are read, claimed or not
        assert isinstance(translator.start_region(PARTS, 64), PendingBlock)
    finally:
        helper.close()


# --- the code cache ---------------------------------------------------------------------------

def test_the_helper_takes_code_from_the_cache_and_the_vcpu_keeps_its_entries(tmp_path):
    source, _, _ = generate_block(PARTS, 64, LOW_END, EMITTERS)
    earlier = CodeCache(tmp_path / "guest.code")
    code = earlier.compile(source, NAME)
    earlier.save()
    helper = CompileHelper(tmp_path / "guest.code")
    try:
        cached, fresh = _waited(helper, _submit(helper)), _waited(helper, _submit(helper, _parts(7)))
    finally:
        helper.close()
    assert cached.code == code and not cached.new and cached.key
    assert fresh.new and fresh.key and fresh.key != cached.key
    vcpu_cache = CodeCache(tmp_path / "guest.code")
    vcpu_cache.keep(cached.key, cached.blob, cached.new)
    vcpu_cache.keep(fresh.key, fresh.blob, fresh.new)
    assert (vcpu_cache.hits, vcpu_cache.compiled) == (1, 1)
    later_source, _, _ = generate_block(_parts(7), 64, LOW_END, EMITTERS)
    assert vcpu_cache.lookup(later_source, NAME) == fresh.code  # kept for the next boot


def test_a_cache_entry_that_is_not_the_blocks_code_is_compiled_again(tmp_path, caplog):
    # The helper's cache must not send the vCPU a blob that fails its checks: that would give
    # the whole helper up for one bad entry.
    source, _, _ = generate_block(PARTS, 64, LOW_END, EMITTERS)
    earlier = CodeCache(tmp_path / "guest.code")
    earlier.add(source, NAME, compile("x = 1", "<elsewhere>", "exec"))
    earlier.save()
    helper = CompileHelper(tmp_path / "guest.code")
    try:
        with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
            translated = _waited(helper, _submit(helper))
        assert helper.available and "compile helper failed" not in caplog.text
    finally:
        helper.close()
    assert translated.new and translated.code == compile_block(source, NAME)


@pytest.mark.parametrize("setting, pypy, translate_after, reproducible, cpus, wanted", [
    ("auto", False, 32, False, 2, True),
    ("auto", True, 6400, False, 2, False),  # PyPy: compiling is a small part of translating
    ("auto", False, 32, False, 1, False),  # no second CPU to compile on
    ("auto", False, 32, True, 2, False),  # -icount sleep=off: the run must repeat exactly
    ("auto", False, 0, False, 2, False),  # "translate at once" (the test suite's mode)
    ("auto", False, None, False, 2, False),  # nothing is translated
    ("on", True, 32, True, 1, True),
    ("on", False, None, False, 2, False),
    ("off", False, 32, False, 2, False),
])
def test_the_helper_is_wanted_where_it_can_pay(monkeypatch, setting, pypy, translate_after,
                                               reproducible, cpus, wanted):
    monkeypatch.setenv("PYHV_TCG_COMPILE_HELPER", setting)
    monkeypatch.setattr(compiler_module, "ON_PYPY", pypy)
    monkeypatch.setattr(compiler_module, "usable_cpus", lambda: cpus)
    assert helper_wanted(translate_after, reproducible) is wanted


def test_a_bad_setting_is_refused(monkeypatch):
    monkeypatch.setenv("PYHV_TCG_COMPILE_HELPER", "yes")
    with pytest.raises(ConfigError, match="PYHV_TCG_COMPILE_HELPER='yes'"):
        helper_wanted(32, False)


# --- the run loop with a helper ---------------------------------------------------------------

def _with_helper(code: bytes, translate_after: int = 2, budget: int = 100_000,
                 submitted: Optional[List[str]] = None, cache: Optional[CodeCache] = None):
    memory, cpu = long_mode_cpu(code, {})
    cpu.translate_after = translate_after
    cpu.translator.code_cache = cache
    helper = cpu.translator.helper = CompileHelper()
    if submitted is not None:
        submit = helper.submit
        helper.submit = lambda parts, bits, low_end, name: (
            submitted.append(name) or submit(parts, bits, low_end, name))
    try:
        result = cpu.run(budget)
    finally:
        helper.close()
    return memory, cpu, result


@needs_as
def test_blocks_translated_by_the_helper_run_as_the_interpreter_does(tmp_path, caplog):
    code = assemble(LOOP)
    interpreted = _state(*_run(code, {}, None))
    cache = CodeCache(tmp_path / "loop.code")
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
        memory, cpu, result = _with_helper(code, cache=cache)
    assert _state(memory, cpu, result) == interpreted
    assert "compile helper failed" not in caplog.text and cpu.translator.translated >= 1
    assert any(block.fn is not None and block.parts > 1 for block in cpu.blocks.values())
    assert cache.compiled == cpu.translator.translated  # every one came from the helper


@needs_as
def test_a_block_with_constants_it_cannot_have_is_translated_here(monkeypatch, caplog):
    _lying(monkeypatch, "import pyhv.accel.tcg.translate as t; g = t.generate_block\n"
                        "t.generate_block = lambda *a: (lambda r: (r[0], r[1], dict(r[2], os=0)))(g(*a))")
    code = assemble(LOOP)
    interpreted = _state(*_run(code, {}, None))
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
        memory, cpu, result = _with_helper(code)
    assert _state(memory, cpu, result) == interpreted
    assert not cpu.translator.helper.available and "constant 'os'" in caplog.text
    assert cpu.translator.translated >= 1


@needs_as
def test_the_blocks_a_pending_region_joins_are_not_translated_on_their_own():
    # While the helper translates the loop's region, its other blocks run interpreted and
    # heat up; in-line translation would have run them inside the region's function.
    code = assemble(LOOP.replace("$40", "$2000"))
    _, in_line, _ = _run(code, {}, 2, budget=100_000)
    submitted: List[str] = []
    memory, cpu, result = _with_helper(code, submitted=submitted)
    assert result.reason == StopReason.HLT
    assert len(submitted) == len(set(submitted)) <= in_line.translator.translated == 2


SELF_PATCHING = f"""
        mov $300, %rcx
        lea patched(%rip), %rdi
    1:  add $1, %rax            # its immediate becomes 5 half way
    patched = . - 1
        cmp $150, %rcx
        jne 2f
        movb $5, (%rdi)
    2:  dec %rcx
        jnz 1b
        mov %rax, {DATA}
        hlt
"""


@needs_as
def test_a_block_rewritten_while_the_helper_compiles_it_runs_its_new_code():
    code = assemble(SELF_PATCHING)
    interpreted = _state(*_run(code, {}, None))
    assert interpreted[2]["rax"] == 151 * 1 + 149 * 5
    for translate_after in (2, 140, 149):
        memory, cpu, result = _with_helper(code, translate_after)
        assert _state(memory, cpu, result) == interpreted


# --- the accelerator --------------------------------------------------------------------------

def _platform(**settings):
    from pyhv.accel.base import Platform
    from pyhv.bus import Bus
    from pyhv.cpu_model import pyhv64
    from pyhv.lifecycle import Lifecycle
    from pyhv.memory import GuestMemory, MiB

    return Platform(GuestMemory(4 * MiB), Bus("pio"), Bus("mmio"), Lifecycle(), pyhv64(),
                    **settings)


def test_the_accelerator_starts_the_helper_and_ends_it(monkeypatch):
    from pyhv.accel.tcg.accel import TcgAccelerator

    monkeypatch.setenv("PYHV_TCG_COMPILE_HELPER", "auto")
    monkeypatch.setattr(compiler_module, "ON_PYPY", False)
    monkeypatch.setattr(compiler_module, "usable_cpus", lambda: 2)
    monkeypatch.setattr(cpu_module, "TRANSLATE_AFTER", 32)  # whatever the suite runs with
    platform = _platform()
    accel = TcgAccelerator(platform)
    try:
        helper = accel.cpu.translator.helper
        assert helper is not None
        assert helper.result(_submit(helper), wait=True)[1] is not None
        process = helper._process
    finally:
        accel.close()
        platform.memory.close()
    assert process.poll() is not None


def test_a_run_meant_to_repeat_exactly_compiles_in_line(monkeypatch):
    from pyhv.accel.tcg.accel import TcgAccelerator

    monkeypatch.setenv("PYHV_TCG_COMPILE_HELPER", "auto")
    monkeypatch.setattr(compiler_module, "ON_PYPY", False)
    monkeypatch.setattr(compiler_module, "usable_cpus", lambda: 2)
    monkeypatch.setattr(cpu_module, "TRANSLATE_AFTER", 32)
    platform = _platform(icount_sleep=False)  # -icount shift=0,sleep=off
    accel = TcgAccelerator(platform)
    try:
        assert accel.cpu.translator.helper is None
    finally:
        accel.close()
        platform.memory.close()

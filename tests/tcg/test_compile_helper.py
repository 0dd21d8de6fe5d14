"""Compiling translated blocks in a helper process (pyhv.accel.tcg.compiler): the code it sends
back is what ``compile_block`` makes here, the vCPU interprets a block until it arrives, and a
helper that fails, dies or lies is given up for compiling in the vCPU thread, never trusted."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import List, Optional

import pytest

from pyhv.accel.tcg import compiler as compiler_module
from pyhv.accel.tcg import cpu as cpu_module
from pyhv.accel.tcg.compiler import CompileHelper, compile_block, helper_wanted
from pyhv.accel.tcg.cpu import StopReason
from pyhv.errors import ConfigError

from tests.tcg.harness import assemble, long_mode_cpu, needs_as
from tests.tcg.test_regions import LOOP
from tests.tcg.test_translate import DATA, _run, _state

SOURCE = "def block(x):\n    return x * 3 + 1\n"
NAME = "<tcg block 0x1000>"


@pytest.fixture
def helper():
    helper = CompileHelper()
    yield helper
    helper.close()


def _waited(helper: CompileHelper, token: int):
    done, code = helper.result(token, wait=True)
    assert done
    return code


def test_the_helper_sends_back_what_compile_makes_here(helper):
    token = helper.submit(SOURCE, NAME)
    code = _waited(helper, token)
    assert code == compile_block(SOURCE, NAME) and code.co_filename == NAME
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["block"](5) == 16


def test_the_helper_prunes_dead_flag_locals_as_the_vcpu_does(helper):
    source = "def block(x):\n    fa1 = x + 1\n    fr1 = x * 3\n    return fr1 + 1\n"
    code = _waited(helper, helper.submit(source, NAME))
    assert code == compile_block(source, NAME)
    function = next(const for const in code.co_consts if hasattr(const, "co_varnames"))
    assert "fr1" in function.co_varnames and "fa1" not in function.co_varnames


def test_a_reply_is_taken_without_waiting_once_it_arrived(helper):
    token = helper.submit(SOURCE, NAME)
    _waited(helper, helper.submit("x = 1\n", "<first>"))  # the helper answers in order
    assert helper.result(token) == (True, compile_block(SOURCE, NAME))


def test_a_source_that_does_not_compile_is_left_to_compile_here(helper):
    token = helper.submit("def block(:\n", NAME)
    assert helper.result(token, wait=True) == (True, None)
    assert helper.available  # a bad source is not a broken helper
    assert _waited(helper, helper.submit(SOURCE, NAME)) is not None


def test_sources_sent_faster_than_they_are_read_do_not_deadlock(helper):
    # The replies (marshalled code) fill the reply pipe long before 200 requests are sent;
    # the helper then blocks on it and stops reading its input.
    sources = [f"def block(x):\n    return x + {k}\n" + "y = [" + "1, " * 20_000 + "]\n"
               for k in range(200)]
    tokens = []
    sender = threading.Thread(target=lambda: tokens.extend(helper.submit(s, NAME) for s in sources))
    sender.start()
    sender.join(timeout=60)
    assert not sender.is_alive(), "submit blocked"
    codes = [_waited(helper, token) for token in tokens]
    assert all(code is not None for code in codes)
    namespace: dict = {}
    exec(codes[-1], namespace)
    assert namespace["block"](1) == 200


def test_a_dead_helper_is_given_up_with_one_warning(helper, caplog):
    token = helper.submit(SOURCE, NAME)
    _waited(helper, token)
    helper._process.kill()
    helper._process.wait()
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
        token = helper.submit(SOURCE, NAME)
        first = helper.result(token, wait=True) if token is not None else (True, None)
        assert first == (True, None)
        assert helper.submit(SOURCE, NAME) is None
    assert not helper.available
    assert len([r for r in caplog.records if "compile helper failed" in r.getMessage()]) == 1


def test_a_stalled_helper_is_given_up_after_the_timeout(helper, monkeypatch, caplog):
    monkeypatch.setattr(compiler_module, "REPLY_TIMEOUT", 0.5)
    _waited(helper, helper.submit(SOURCE, NAME))  # started
    process = helper._process
    os.kill(process.pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
            token = helper.submit(SOURCE, NAME)
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


def test_code_compiled_under_another_name_is_refused(helper, monkeypatch, caplog):
    lying = compiler_module._HELPER_LOOP.replace("filename, \"exec\"", '"<elsewhere>", "exec"')
    assert lying != compiler_module._HELPER_LOOP
    monkeypatch.setattr(compiler_module, "_HELPER_LOOP", lying)
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
        assert helper.result(helper.submit(SOURCE, NAME), wait=True) == (True, None)
    assert not helper.available
    assert "something other than the block's code" in caplog.text


@pytest.mark.parametrize("reply", ["([1], b'', '')", "(0, 'not bytes', '')", "'garbage'"])
def test_a_malformed_reply_is_refused(helper, monkeypatch, caplog, reply):
    lying = compiler_module._HELPER_LOOP.replace(
        "frame = marshal.dumps(reply)", f"frame = marshal.dumps({reply})")
    assert lying != compiler_module._HELPER_LOOP
    monkeypatch.setattr(compiler_module, "_HELPER_LOOP", lying)
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.compiler"):
        assert helper.result(helper.submit(SOURCE, NAME), wait=True) == (True, None)
    assert not helper.available and "malformed reply" in caplog.text


def test_replies_nobody_comes_back_for_are_bounded(helper, monkeypatch):
    monkeypatch.setattr(compiler_module, "MAX_UNCLAIMED", 4)
    tokens = [helper.submit(f"x = {k}\n", NAME) for k in range(10)]
    _waited(helper, tokens[-1])
    assert len(helper._replies) <= 4 and len(helper._pending) <= 4
    # An evicted reply's block compiles here; a kept one still gets its code.
    assert helper.result(tokens[0]) == (True, None)
    assert _waited(helper, tokens[-2]) == compile_block("x = 8\n", NAME)


def test_a_closed_helper_leaves_every_block_to_compile_here():
    helper = CompileHelper()
    token = helper.submit(SOURCE, NAME)
    process = helper._process
    helper.close()
    assert process.poll() is not None  # ended, not left behind
    assert helper.result(token) == (True, None)
    assert helper.submit(SOURCE, NAME) is None


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
                 submitted: Optional[List[str]] = None):
    memory, cpu = long_mode_cpu(code, {})
    cpu.translate_after = translate_after
    helper = cpu.translator.helper = CompileHelper()
    if submitted is not None:
        submit = helper.submit
        helper.submit = lambda source, name: submitted.append(name) or submit(source, name)
    try:
        result = cpu.run(budget)
    finally:
        helper.close()
    return memory, cpu, result


@needs_as
def test_blocks_compiled_by_the_helper_run_as_the_interpreter_does():
    code = assemble(LOOP)
    interpreted = _state(*_run(code, {}, None))
    memory, cpu, result = _with_helper(code)
    assert _state(memory, cpu, result) == interpreted
    assert cpu.translator.translated >= 1
    assert any(block.fn is not None and block.parts > 1 for block in cpu.blocks.values())


@needs_as
def test_the_blocks_a_pending_region_joins_are_not_translated_on_their_own():
    # While the helper compiles the loop's region, its other blocks run interpreted and
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
        assert helper.result(helper.submit(SOURCE, NAME), wait=True)[1] is not None
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

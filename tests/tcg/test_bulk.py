"""rep stos / rep movs a page at a time (pyhv/accel/tcg/bulk.py) against the per-element handlers.

Each case runs twice on the same guest: once with the bulk handlers the CPU installs, once
with them switched off (the string family's element loop), and the registers, the flags,
the retired count and the touched memory must match, faults and self-modifying code included.
"""

from __future__ import annotations

import random
from typing import Optional

import pytest

from pyhv.accel.tcg import bulk, cpu as cpu_module
from pyhv.accel.tcg.insns import string

from .harness import assemble, long_mode_cpu, needs_as

pytestmark = needs_as

DST, SRC = 0x200000, 0x280000
UNMAPPED = 0x400000  # the harness maps 4 MiB


def _run(source: str, regs: dict, use_bulk: bool, translate_after: Optional[int], monkeypatch):
    monkeypatch.setattr(cpu_module, "BULK_HANDLERS", bulk.BULK_HANDLERS if use_bulk else {})
    memory, cpu = long_mode_cpu(assemble(source + "\nhlt"), regs)
    rng = random.Random(7)
    pattern = bytes(rng.randrange(256) for _ in range(0x3000))
    memory.write(SRC - 0x1000, pattern)
    memory.write(DST - 0x1000, pattern[::-1])
    cpu.translate_after = translate_after
    result = cpu.run(10_000)
    return (result.reason, result.instructions, cpu.registers(), memory.read(DST - 0x1000, 0x4000),
            memory.read(SRC - 0x1000, 0x4000), memory.read(0x10000, 0x100))


def _same(source: str, regs: dict, monkeypatch, translate_after: Optional[int] = 0):
    fast = _run(source, regs, True, translate_after, monkeypatch)
    slow = _run(source, regs, False, translate_after, monkeypatch)
    assert fast == slow
    return fast


@pytest.mark.parametrize("width", ["b", "w", "l", "q"])
@pytest.mark.parametrize("start, count", [(DST, 0), (DST, 1), (DST + 3, 700), (DST - 5, 1500),
                                          (DST + 0xFFE, 3)])
def test_rep_stos_matches_element_loop(width, start, count, monkeypatch):
    state = _same(f"rep stos{width}", {"rax": 0x1122_3344_5566_7788, "rcx": count, "rdi": start},
                  monkeypatch)
    assert state[2]["rcx"] == 0
    assert state[2]["rdi"] == start + count * {"b": 1, "w": 2, "l": 4, "q": 8}[width]


@pytest.mark.parametrize("width", ["b", "q"])
@pytest.mark.parametrize("src, dst, count", [
    (SRC, DST, 600),            # disjoint, several pages
    (SRC + 5, DST + 0xFF3, 900),  # both misaligned, chunks end at different page offsets
    (SRC, SRC + 8, 200),        # destination just above the source: a repeated pattern
    (SRC + 16, SRC, 300),       # destination below the source: memmove-like, still forward
    (SRC, SRC, 100),            # onto itself
])
def test_rep_movs_matches_element_loop(width, src, dst, count, monkeypatch):
    state = _same(f"rep movs{width}", {"rcx": count, "rsi": src, "rdi": dst}, monkeypatch)
    assert state[2]["rcx"] == 0


def test_backward_direction_uses_the_element_loop(monkeypatch):
    _same("std\nrep stosq\nrep movsb\ncld", {"rax": 5, "rcx": 40, "rdi": DST + 0x800,
                                              "rsi": SRC + 0x100}, monkeypatch)


def test_address_size_32_wraps_registers_like_the_element_loop(monkeypatch):
    state = _same("addr32 rep stosb\nmov $64, %ecx\naddr32 rep movsl",
                  {"rax": 0xAB, "rcx": 5000, "rdi": 0xFFFF_FFFF_0000_0000 | DST,
                   "rsi": 0xFFFF_FFFF_0000_0000 | SRC}, monkeypatch)
    assert state[2]["rdi"] >> 32 == 0


@pytest.mark.parametrize("source, regs", [
    ("rep stosq", {"rcx": 0x300, "rdi": UNMAPPED - 0x800}),
    ("rep movsq", {"rcx": 0x300, "rsi": UNMAPPED - 0x400, "rdi": DST}),
    ("rep movsl", {"rcx": 0x300, "rsi": SRC, "rdi": UNMAPPED - 0x404}),
])
def test_fault_midway_leaves_the_same_restartable_state(source, regs, monkeypatch):
    state = _same(source, dict(regs, rax=0x42), monkeypatch)
    assert state[2]["r15"] == 14  # #PF reached its handler
    assert 0 < state[2]["rcx"] < regs["rcx"]


def test_store_over_the_following_code_runs_the_new_code(monkeypatch):
    # rep stosb overwrites the `mov $1, %eax` after it with nops: neither path may run the old one.
    src = "lea 1f(%rip), %rdi\nmov $5, %ecx\nmov $0x90, %al\nrep stosb\n1: mov $1, %eax"
    for translate_after in (None, 0):
        state = _same(src, {}, monkeypatch, translate_after)
        assert state[2]["rax"] == 0x90


def test_bulk_handlers_replace_only_the_string_moves():
    assert bulk.BULK_HANDLERS == {string.stos: bulk.rep_stos, string.movs: bulk.rep_movs}

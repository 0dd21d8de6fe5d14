"""The string family (pyhv/accel/tcg/insns/string.py) through the interpreter and the
translator: the rep/repe/repne loop, its stop rules, RCX/RSI/RDI after each element, and
ins/outs against a port on the PIO bus. Bulk rep movs/stos are checked in test_bulk.py.
"""

from __future__ import annotations

from typing import List, Tuple

import pytest
from hypothesis import given, settings, strategies as st

from .harness import assemble, long_mode_cpu, needs_as, run_to_hlt

pytestmark = needs_as

SRC, DST = 0x20000, 0x30000
ZF = 1 << 6
PORT = 0x3F0


class CountingPort:
    """Reads return 0x10, 0x11, ... (masked to the size); writes are recorded."""

    def __init__(self) -> None:
        self.next_value = 0x10
        self.writes: List[Tuple[int, int]] = []

    def read(self, offset: int, size: int) -> int:
        value = self.next_value & ((1 << (8 * size)) - 1)
        self.next_value += 1
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((size, value))


def _run(source: str, regs: dict, translate_after, src: bytes = b"", dst: bytes = b""):
    memory, cpu = long_mode_cpu(assemble(source + "\nhlt"), regs)
    memory.write(SRC, src)
    memory.write(DST, dst)
    port = CountingPort()
    cpu.pio_bus.attach(PORT, 4, port)
    cpu.translate_after = translate_after
    run_to_hlt(cpu)
    return memory, cpu.registers(), port


both_engines = pytest.mark.parametrize("translate_after", [None, 0], ids=["interpreter", "translator"])


def _compare_model(left: bytes, right: bytes, count: int, repe: bool) -> Tuple[int, bool]:
    """Elements a repe/repne cmpsb compares before it stops, and whether the last pair was equal."""
    done = 0
    equal = False
    while done < count:
        equal = left[done] == right[done]
        done += 1
        if equal != repe:
            break
    return done, equal


@both_engines
@pytest.mark.parametrize("prefix, repe", [("repe", True), ("repne", False)])
def test_cmpsb_stops_where_the_prefix_says(prefix, repe, translate_after):
    left = b"abcdefgh"
    right = b"abcXefgh" if repe else b"xyzdXXgh"
    _, r, _ = _run(f"{prefix} cmpsb", {"rcx": 8, "rsi": SRC, "rdi": DST}, translate_after, left, right)
    done, equal = _compare_model(left, right, 8, repe)
    assert done == 4
    assert (r["rcx"], r["rsi"], r["rdi"]) == (8 - done, SRC + done, DST + done)
    assert bool(r["rflags"] & ZF) == equal


@settings(max_examples=40, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=24),
       repe=st.booleans())
def test_cmpsb_matches_a_model_of_the_prefix(pairs, repe):
    left = bytes(p[0] for p in pairs)
    right = bytes(p[1] for p in pairs)
    prefix = "repe" if repe else "repne"
    _, r, _ = _run(f"{prefix} cmpsb", {"rcx": len(pairs), "rsi": SRC, "rdi": DST}, None, left, right)
    done, equal = _compare_model(left, right, len(pairs), repe)
    assert (r["rcx"], r["rsi"], r["rdi"]) == (len(pairs) - done, SRC + done, DST + done)
    assert bool(r["rflags"] & ZF) == equal


@both_engines
def test_repe_scasw_over_equal_words_runs_out_the_count(translate_after):
    _, r, _ = _run("repe scasw", {"rcx": 5, "rdi": DST, "rax": 0x1234}, translate_after,
                   dst=(0x1234).to_bytes(2, "little") * 6)
    assert (r["rcx"], r["rdi"]) == (0, DST + 10)
    assert r["rflags"] & ZF


@both_engines
def test_rep_with_rcx_zero_touches_nothing(translate_after):
    source = "rep movsb\nrepe cmpsb\nrepne scasb\nrep stosq\nrep lodsb\nrep insb\nrep outsb"
    regs = {"rcx": 0, "rsi": SRC, "rdi": DST, "rax": 0x77, "rdx": PORT}
    memory, r, port = _run(source, regs, translate_after, b"\x01" * 16, b"\x02" * 16)
    assert (r["rcx"], r["rsi"], r["rdi"], r["rax"]) == (0, SRC, DST, 0x77)
    assert memory.read(DST, 16) == b"\x02" * 16
    assert port.writes == [] and port.next_value == 0x10


@both_engines
def test_rep_lodsl_leaves_the_last_element_zero_extended(translate_after):
    words = b"".join(v.to_bytes(4, "little") for v in (1, 2, 0xDEADBEEF))
    _, r, _ = _run("rep lodsl", {"rcx": 3, "rsi": SRC, "rax": 0xFFFF_FFFF_FFFF_FFFF},
                   translate_after, words)
    assert (r["rax"], r["rcx"], r["rsi"]) == (0xDEADBEEF, 0, SRC + 12)


@both_engines
def test_single_lodsb_and_movsw_without_prefix_ignore_rcx(translate_after):
    memory, r, _ = _run("lodsb\nmovsw", {"rcx": 9, "rsi": SRC, "rdi": DST}, translate_after,
                        b"\x5a\x11\x22")
    assert (r["rax"] & 0xFF, r["rcx"], r["rsi"], r["rdi"]) == (0x5A, 9, SRC + 3, DST + 2)
    assert memory.read(DST, 2) == b"\x11\x22"


@both_engines
def test_backward_rep_movsl_copies_from_the_top(translate_after):
    memory, r, _ = _run("std\nrep movsl\ncld", {"rcx": 3, "rsi": SRC + 8, "rdi": DST + 8},
                        translate_after, bytes(range(12)))
    assert memory.read(DST, 12) == bytes(range(12))
    assert (r["rcx"], r["rsi"], r["rdi"]) == (0, SRC - 4, DST - 4)


@both_engines
@pytest.mark.parametrize("suffix, size", [("b", 1), ("w", 2), ("l", 4)])
def test_rep_outs_writes_each_element_to_the_port_in_order(suffix, size, translate_after):
    data = bytes(range(1, 1 + 3 * size))
    _, r, port = _run(f"rep outs{suffix}", {"rcx": 3, "rsi": SRC, "rdx": PORT}, translate_after, data)
    expected = [(size, int.from_bytes(data[n * size:(n + 1) * size], "little")) for n in range(3)]
    assert port.writes == expected
    assert (r["rcx"], r["rsi"]) == (0, SRC + 3 * size)


@both_engines
@pytest.mark.parametrize("suffix, size", [("b", 1), ("w", 2), ("l", 4)])
def test_rep_ins_stores_each_port_read(suffix, size, translate_after):
    memory, r, port = _run(f"rep ins{suffix}", {"rcx": 3, "rdi": DST, "rdx": PORT}, translate_after)
    assert memory.read(DST, 3 * size) == b"".join(v.to_bytes(size, "little") for v in (0x10, 0x11, 0x12))
    assert (r["rcx"], r["rdi"]) == (0, DST + 3 * size)


@both_engines
def test_addr32_rep_stosb_counts_ecx_and_wraps_edi(translate_after):
    high = 0xAAAA_BBBB_0000_0000
    memory, r, _ = _run("addr32 rep stosb", {"rcx": high | 4, "rdi": high | DST, "rax": 0x66},
                        translate_after)
    assert memory.read(DST, 5) == b"\x66" * 4 + b"\x00"
    # A 32-bit register write clears the upper half, as for any 32-bit destination.
    assert (r["rcx"], r["rdi"]) == (0, DST + 4)


@both_engines
def test_fault_midway_through_rep_lodsq_leaves_a_restartable_state(translate_after):
    end = 0x400000  # the harness maps 4 MiB; the next page is not present
    _, r, _ = _run("rep lodsq", {"rcx": 10, "rsi": end - 24}, translate_after)
    assert r["r15"] == 14  # #PF
    assert (r["rcx"], r["rsi"]) == (7, end)


def test_flags_of_a_compare_are_those_of_the_last_pair():
    _, r, _ = _run("repe cmpsb", {"rcx": 3, "rsi": SRC, "rdi": DST}, None, b"\x01\x01\x05", b"\x01\x01\x07")
    assert not r["rflags"] & ZF and r["rflags"] & 1  # 5 - 7 borrows: CF
    assert r["rcx"] == 0


@both_engines
@pytest.mark.parametrize("opcode, name", [(0x6D, "ins"), (0x6F, "outs")])
def test_rex_w_ins_outs_move_doublewords_and_step_by_four(opcode, name, translate_after):
    # REX.W does not widen ins/outs: the access and the step stay 4 bytes (SDM, INS and OUTS).
    source = f".byte 0xf3, 0x48, {opcode:#x}"
    memory, r, port = _run(source, {"rcx": 2, "rsi": SRC, "rdi": DST, "rdx": PORT}, translate_after,
                           bytes(range(1, 9)))
    if name == "ins":
        assert memory.read(DST, 12) == bytes([0x10, 0, 0, 0, 0x11, 0, 0, 0, 0, 0, 0, 0])
        assert r["rdi"] == DST + 8
    else:
        assert port.writes == [(4, 0x04030201), (4, 0x08070605)]
        assert r["rsi"] == SRC + 8

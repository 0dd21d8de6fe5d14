"""bench/_guestprof: kallsyms parsing, naming a RIP, and the caller chains of a stack scan."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _guestprof import USER, GuestProfiler, Sample, Symbols, callers  # noqa: E402  (bench/ is not a package)

KALLSYMS = """\
ffffffff81000000 T _text\r
ffffffff81001000 T start_kernel\r
ffffffff81002000 t helper\r
ffffffff81003000 T _etext\r
ffffffff82000000 D some_table\r
ffffffff82001000 d local_data\r
ffffffffc0000000 t mod_fn\t[evdev]\r
pyhv-guest: exit status 0\r
"""


def test_parse_keeps_symbols_in_address_order_and_skips_other_lines():
    symbols = Symbols.parse(KALLSYMS)
    assert symbols.names == ["_text", "start_kernel", "helper", "_etext", "some_table", "local_data", "mod_fn"]
    assert symbols.text == [True, True, True, True, False, False, True]


def test_a_dump_without_addresses_is_refused():
    hidden = "0000000000000000 T start_kernel\n0000000000000000 t helper\n"
    with pytest.raises(ValueError, match="no text symbols with addresses"):
        Symbols.parse(hidden)


def test_name_of_a_rip():
    symbols = Symbols.parse(KALLSYMS)
    assert symbols.name(0xFFFFFFFF81001234) == "start_kernel"
    assert symbols.name(0xFFFFFFFF81002FFF) == "helper"
    assert symbols.name(-0x7EFFE000) == "helper"  # the software CPU keeps RIP in the signed form
    assert symbols.name(0x401000) == USER
    assert symbols.name(0xFFFFFFFFC0000010) == "mod_fn"


def test_callers_skip_data_and_user_values_and_merge_repeats():
    symbols = Symbols.parse(KALLSYMS)
    stack = [0x1234, 0xFFFFFFFF81002010, 0xFFFFFFFF82000008, 0xFFFFFFFF81002020,
             0x7FFF_0000_1000, 0xFFFFFFFF81001100, 0xFFFFFFFF81000010]
    assert callers(symbols, stack, depth=6) == ["helper", "start_kernel", "_text"]
    assert callers(symbols, stack, depth=2) == ["helper", "start_kernel"]


def test_report_ranks_functions_and_their_callers():
    symbols = Symbols.parse(KALLSYMS)
    profiler = GuestProfiler(interval=0.002, stack_qwords=4)
    profiler.samples = ([Sample(0xFFFFFFFF81002004, [0xFFFFFFFF81001100])] * 3
                        + [Sample(0xFFFFFFFF81001004, [])] + [Sample(0x400000, [])] * 2)
    lines = profiler.report(symbols, top=2, with_callers=1)
    assert lines[0].startswith("guest profile: 6 samples")
    assert lines[1].split() == ["50.0%", "3", "helper"]
    assert lines[2].split() == ["33.3%", "2", USER]
    assert lines[3].strip() == "callers of helper:" and lines[4].split() == ["3", "start_kernel"]
    assert len(lines) == 5


@pytest.mark.parametrize("content, message", [(None, "No such file"), ("not kallsyms\n", "no text symbols")])
def test_tcg_kernel_refuses_an_unusable_symbol_file(tmp_path, content, message):
    import os
    import subprocess

    path = tmp_path / "kallsyms.txt"
    if content is not None:
        path.write_text(content)
    bench = Path(__file__).resolve().parents[2] / "bench" / "tcg_kernel.py"
    env = dict(os.environ, PYPY_GC_NURSERY="64MB", PYPY_GC_MAJOR_COLLECT="3")  # no re-exec on PyPy
    done = subprocess.run([sys.executable, str(bench), "--guest-profile", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_peek_reads_the_guest_stack_through_its_page_tables_and_leaves_the_tlb_alone():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _guestprof import peek_qwords
    from tcg.harness import KERNEL_BASE, long_mode_cpu

    memory, cpu = long_mode_cpu(b"\xf4")  # identity-mapped 4 MiB, and again at KERNEL_BASE
    values = [0xFFFFFFFF81000000 + k for k in range(6)]
    for k, value in enumerate(values):
        memory.write_u64(0x201FF0 + 8 * k, value)  # crosses from one 4 KiB page into the next
    entries = dict(cpu.mmu.entries)
    assert peek_qwords(cpu, 0x201FF0, 6) == values
    assert peek_qwords(cpu, KERNEL_BASE + 0x201FF0, 6) == values  # the same bytes, kernel mapping
    assert peek_qwords(cpu, 0x3FFFF0, 8) == [0, 0]  # stops where the mapping ends (4 MiB)
    assert peek_qwords(cpu, 0x7FFF_0000_0000, 4) == []  # nothing mapped there
    assert cpu.mmu.entries == entries  # no TLB fill: safe inside a signal handler

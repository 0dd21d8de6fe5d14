"""bench/tcg_vm: the loop model, checksum parsing and comparison, and the MIPS arithmetic."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))
import tcg_vm  # noqa: E402  (bench/ is not a package)
from _vmtiming import BenchError  # noqa: E402


def test_tight_loop_model_by_hand():
    # rcx 0,1,2: rax 0,1,3; rdx 0, 0^1=1, 1^3=2.
    assert [tcg_vm.tight_loop_checksum(n) for n in range(4)] == [0, 0, 1, 2]


def test_kernel_loop_model_of_one_iteration_by_hand():
    # Entry 0 is 0; value = rol64((0 + seed) * multiplier, 13) ^ 0.
    product = (tcg_vm.KERNEL_CHECKSUM_SEED * tcg_vm.MIX_MULTIPLIER) & tcg_vm.MASK64
    value = ((product << 13) | (product >> 51)) & tcg_vm.MASK64
    seed = tcg_vm.KERNEL_CHECKSUM_SEED
    checksum = (seed + value) & tcg_vm.MASK64 if value & 1 else ~(seed - value) & tcg_vm.MASK64
    r10 = (value - 1) & tcg_vm.MASK64 if value < 1 << 63 else 1
    assert tcg_vm.kernel_loop_checksum(1) == checksum ^ r10
    assert tcg_vm.kernel_loop_checksum(0) == seed


def test_parse_checksums_reads_the_last_line_and_names_a_missing_one():
    output = b"mips: start\r\nmips: checksums tight 0x00000000000000ff kernel 0x8000000000000001\r\n"
    assert tcg_vm.parse_checksums(output) == (0xFF, (1 << 63) | 1)
    with pytest.raises(BenchError, match=r"qemu tcg -M pc: no 'mips: checksums.*mips: kernel loop done"):
        tcg_vm.parse_checksums(b"mips: start\nmips: kernel loop done\n", "qemu tcg -M pc")
    with pytest.raises(BenchError, match="no 'mips: checksums"):
        tcg_vm.parse_checksums(b"mips: checksums tight 0xff kernel 0x1\n")  # not fixed-width


def test_mips_subtracts_the_empty_run_and_refuses_an_unmeasurable_one():
    assert tcg_vm.mips_from_times(1_000_000, 1.5, 0.5, 5) == pytest.approx(5.0)
    with pytest.raises(BenchError, match="raise --iters"):
        tcg_vm.mips_from_times(10, 0.5, 0.5, 5)


def _result(label, iters, tight, kernel):
    return tcg_vm.Result(label, iters, 1.0, 1.0, tight, kernel)


def test_checksum_problems_checks_against_the_model_and_between_vmms():
    good = (tcg_vm.tight_loop_checksum(50), tcg_vm.kernel_loop_checksum(50))
    assert tcg_vm.checksum_problems([_result("a", 50, *good), _result("b", 50, *good)]) == []
    wrong = tcg_vm.checksum_problems([_result("a", 50, good[0], good[1] ^ 4)])
    assert len(wrong) == 1 and "iters=50: a" in wrong[0] and "Python model" in wrong[0]
    # Above the model's limit the first VMM of a group is the reference.
    big = tcg_vm.checksum_problems([_result("qemu", 10**9, 1, 2), _result("pyhv", 10**9, 1, 3)], model_max_iters=0)
    assert len(big) == 1 and "pyhv" in big[0] and "qemu" in big[0]


def test_table_shows_ratios_against_qemu():
    reference = tcg_vm.Result("qemu tcg -M pc", 10, 1000.0, 400.0, 0, 0)
    pyhv = tcg_vm.Result("pyhv tcg, PyPy 3.9.16", 10, 20.0, 4.0, 0, 0)
    table = tcg_vm.format_table([reference, pyhv], reference, 3)
    row = next(line for line in table.splitlines() if line.startswith("pyhv"))
    assert row.split()[-2:] == ["0.0200", "0.0100"]
    assert "no QEMU run" in tcg_vm.format_table([pyhv], None, 1)


@pytest.mark.parametrize("argv", [["--iters", "0"], ["--rounds", "-1"], ["--cpython-iters", "0"]])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        tcg_vm.parse_args(argv)
    assert "must be positive" in capsys.readouterr().err

"""Hot-block hints (pyhv.accel.tcg.hints): a boot notes the blocks it translated, the next boot
of the same code translates them after WARM_RUNS runs; a damaged file is ignored, never fatal."""

from __future__ import annotations

import json
import logging
import os

import pytest

from pyhv.accel.tcg import hints as hints_module
from pyhv.accel.tcg.hints import HOT, PART, WARM_RUNS, BlockHints, block_key
from pyhv.machine import tcg_hints_path

from tests.tcg.harness import assemble, long_mode_cpu, needs_as

# A loop of ITER rounds: its body is one block that jumps back to itself.
LOOP = """
        mov ${rounds}, %rcx
    1:  add ${step}, %rax
        dec %rcx
        jnz 1b
        hlt
"""
TRANSLATE_AFTER = 1000


def _loop_cpu(hints_path, rounds: int, step: int = 3):
    memory, cpu = long_mode_cpu(assemble(LOOP.format(rounds=rounds, step=step)))
    cpu.translate_after = TRANSLATE_AFTER
    if hints_path is not None:
        cpu.hints = BlockHints(hints_path)
    cpu.run(10 * rounds + 100)
    assert cpu.registers()["rax"] == rounds * step
    return cpu


def _translated(cpu) -> int:
    return sum(1 for block in cpu.blocks.values() if block.fn is not None)


def _end_of_boot(cpu) -> None:
    cpu.note_warm_blocks()
    cpu.hints.save()


@needs_as
def test_a_block_translated_by_one_boot_is_translated_early_by_the_next(tmp_path):
    path = tmp_path / "hints.json"
    first = _loop_cpu(path, rounds=2 * TRANSLATE_AFTER)
    assert _translated(first) == 1
    _end_of_boot(first)
    assert HOT in json.loads(path.read_text())["blocks"].values()

    # 200 rounds: not enough to translate the loop cold, enough after WARM_RUNS with the hint.
    assert _translated(_loop_cpu(None, rounds=200)) == 0
    warm = _loop_cpu(path, rounds=200)
    assert _translated(warm) == 1
    assert WARM_RUNS < 200


@needs_as
def test_a_boot_without_earlier_hints_names_only_the_blocks_it_notes(tmp_path, monkeypatch):
    """No block is looked up when there is nothing to find: a first boot builds 45,000 blocks
    and would hash each one for nothing."""
    named = []
    real_block_key = hints_module.block_key
    monkeypatch.setattr("pyhv.accel.tcg.cpu.block_key",
                        lambda *args: named.append(args) or real_block_key(*args))
    first = _loop_cpu(tmp_path / "hints.json", rounds=2 * TRANSLATE_AFTER)
    assert len(named) == 1  # the loop's block, noted HOT when it was translated
    _end_of_boot(first)

    named.clear()
    _loop_cpu(tmp_path / "hints.json", rounds=200)
    assert len(named) >= 2  # looked up as the blocks were built, and noted again


@needs_as
def test_a_hint_is_for_the_same_bytes_only(tmp_path):
    path = tmp_path / "hints.json"
    _end_of_boot(_loop_cpu(path, rounds=2 * TRANSLATE_AFTER, step=3))
    # The same loop at the same address adding another constant: other bytes, no hint.
    assert _translated(_loop_cpu(path, rounds=200, step=5)) == 0


def test_block_key_names_address_mode_and_bytes():
    code = [b"\x48\x83\xc0\x03", b"\xeb\xfa"]
    key = block_key(0x1000, 64, code)
    assert key == block_key(0x1000, 64, [b"".join(code)])
    assert key != block_key(0x1000, 64, [b"\x48\x83\xc0\x05", b"\xeb\xfa"])
    assert key != block_key(0x2000, 64, code)
    assert key != block_key(0x1000, 32, code)
    assert block_key(-0x7F00_0000, 64, code).startswith("ffffffff81000000/")


def test_save_keeps_this_boots_hints_then_the_earlier_ones(tmp_path, monkeypatch):
    path = tmp_path / "hints.json"
    first = BlockHints(path)
    for n in range(4):
        first.note(f"old{n}", PART)
    first.save()
    second = BlockHints(path)
    assert second.loaded == 4 and second.kind("old1") == PART
    monkeypatch.setattr(hints_module, "MAX_ENTRIES", 5)
    for n in range(3):
        second.note(f"new{n}", HOT)
    second.note("old1", HOT)
    second.note("old1", PART)  # a translated block stays HOT when a region takes it in later
    second.save()
    saved = json.loads(path.read_text())["blocks"]
    assert len(saved) == 5
    assert {key for key, kind in saved.items() if kind == HOT} == {"new0", "new1", "new2", "old1"}


def test_nothing_noted_writes_nothing(tmp_path):
    path = tmp_path / "hints.json"
    BlockHints(path).save()
    assert not path.exists()


@pytest.mark.parametrize("content", [
    b"{not json",
    b"\xff\xfe binary",
    b"[1, 2, 3]",
    json.dumps({"version": 99, "blocks": {}}).encode(),
    json.dumps({"version": 1, "blocks": ["a"]}).encode(),
    json.dumps({"version": 1, "blocks": {"1000/64/00000000": "lukewarm"}}).encode(),
])
def test_a_damaged_hints_file_is_ignored_with_a_warning(tmp_path, caplog, content):
    path = tmp_path / "hints.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.hints"):
        hints = BlockHints(path)
    assert hints.loaded == 0 and hints.kind("1000/64/00000000") is None
    assert "ignoring the block hints" in caplog.text
    hints.note("1000/64/00000000", HOT)
    hints.save()  # and the next boot gets a good file again
    assert BlockHints(path).kind("1000/64/00000000") == HOT


def test_an_oversized_hints_file_is_not_read(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(hints_module, "MAX_FILE_BYTES", 100)
    path = tmp_path / "hints.json"
    path.write_text(json.dumps({"version": 1, "blocks": {f"{n:x}/64/00000000": HOT for n in range(20)}}))
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.hints"):
        assert BlockHints(path).loaded == 0
    assert "more than a hints file holds" in caplog.text


def test_a_hints_file_that_cannot_be_read_or_written_costs_only_the_head_start(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = blocker / "hints.json"  # under a regular file: neither readable nor writable
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.hints"):
        hints = BlockHints(path)
        hints.note("1000/64/00000000", HOT)
        hints.save()
    assert hints.loaded == 0
    assert "cannot save" in caplog.text


def test_old_hints_files_are_pruned_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setattr(hints_module, "MAX_FILES", 3)
    for n in range(5):
        stale = tmp_path / f"{n:016x}.json"
        stale.write_text("{}")
        os.utime(stale, (1000 + n, 1000 + n))
    users_own = tmp_path / "settings.json"  # PYHV_TCG_HINTS may name a directory with other files
    users_own.write_text("{}")
    os.utime(users_own, (1, 1))
    hints = BlockHints(tmp_path / f"{0xabc:016x}.json")
    hints.note("1000/64/00000000", HOT)
    hints.save()
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "0000000000000003.json", "0000000000000004.json", "0000000000000abc.json", "settings.json"]


def test_hints_path_per_kernel_in_the_cache_or_as_configured(tmp_path, monkeypatch):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"")
    monkeypatch.delenv("PYHV_TCG_HINTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tcg_hints_path(kernel)
    assert path.parent == tmp_path / "cache" / "pyhv" / "tcg-hints"
    assert hints_module.HINTS_FILE_NAME.fullmatch(path.name)  # what pruning may remove
    assert tcg_hints_path(tmp_path / "other") != path
    assert tcg_hints_path(None) is None
    monkeypatch.setenv("PYHV_TCG_HINTS", "off")
    assert tcg_hints_path(kernel) is None
    monkeypatch.setenv("PYHV_TCG_HINTS", str(tmp_path / "elsewhere"))
    assert tcg_hints_path(kernel).parent == tmp_path / "elsewhere"


def test_the_accelerator_reads_hints_at_start_and_writes_them_when_closed(tmp_path, monkeypatch):
    from pyhv.accel.base import Platform
    from pyhv.accel.tcg import cpu as cpu_module
    from pyhv.accel.tcg.accel import TcgAccelerator
    from pyhv.bus import Bus
    from pyhv.cpu_model import pyhv64
    from pyhv.lifecycle import Lifecycle
    from pyhv.memory import GuestMemory, MiB

    path = tmp_path / "hints.json"
    earlier = BlockHints(path)
    earlier.note("1000/64/00000000", HOT)
    earlier.save()
    monkeypatch.setattr(cpu_module, "TRANSLATE_AFTER", 6400)  # PyPy's; CPython's 32 keeps none
    platform = Platform(GuestMemory(4 * MiB), Bus("pio"), Bus("mmio"), Lifecycle(), pyhv64(),
                        tcg_hints=path)
    accel = TcgAccelerator(platform)
    try:
        assert accel.cpu.hints.kind("1000/64/00000000") == HOT
        accel.cpu.hints.note("2000/64/00000000", PART)
    finally:
        accel.close()
        platform.memory.close()
    assert BlockHints(path).kind("2000/64/00000000") == PART
    without = Platform(GuestMemory(4 * MiB), Bus("pio"), Bus("mmio"), Lifecycle(), pyhv64())
    accel = TcgAccelerator(without)
    assert accel.cpu.hints is None
    accel.close()
    without.memory.close()
    monkeypatch.setattr(cpu_module, "TRANSLATE_AFTER", 32)
    early = Platform(GuestMemory(4 * MiB), Bus("pio"), Bus("mmio"), Lifecycle(), pyhv64(), tcg_hints=path)
    accel = TcgAccelerator(early)
    assert accel.cpu.hints is None  # translating after 32 runs: nothing to hint
    accel.close()
    early.memory.close()

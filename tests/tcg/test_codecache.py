"""Translated code kept between boots (pyhv.accel.tcg.codecache): a second boot of the same code
loads the code objects the first compiled, runs them alike, and a damaged or foreign file is
ignored with a warning, never fatal and never run."""

from __future__ import annotations

import logging
import marshal
import os
import zlib

import pytest

from pyhv.accel.tcg import codecache as codecache_module
from pyhv.accel.tcg.codecache import CodeCache, code_cache_path

from tests.tcg.harness import assemble, long_mode_cpu, needs_as

SOURCE = "def block(x):\n    return x * 3 + 1\n"
NAME = "<tcg block 0x1000>"

LOOP = """
        mov $500, %rcx
    1:  add $7, %rax
        xor %rcx, %rdx
        dec %rcx
        jnz 1b
        hlt
"""


def _run(code) -> int:
    namespace: dict = {}
    exec(code, namespace)
    return namespace["block"](5)


def _saved(path, *sources: str) -> CodeCache:
    cache = CodeCache(path)
    for source in sources:
        cache.compile(source, NAME)
    cache.save()
    return cache


def test_a_second_boot_loads_what_the_first_compiled(tmp_path):
    path = tmp_path / "k.code"
    first = _saved(path, SOURCE)
    assert (first.hits, first.compiled) == (0, 1)
    second = CodeCache(path)
    code = second.compile(SOURCE, NAME)
    assert (second.hits, second.compiled) == (1, 0)
    assert _run(code) == 16
    assert code.co_filename == NAME


def test_other_text_or_another_file_name_is_compiled_anew(tmp_path):
    path = tmp_path / "k.code"
    _saved(path, SOURCE)
    cache = CodeCache(path)
    assert _run(cache.compile(SOURCE.replace("3", "4"), NAME)) == 21
    assert cache.compile(SOURCE, "<tcg block 0x2000>").co_filename == "<tcg block 0x2000>"
    assert (cache.hits, cache.compiled) == (0, 2)


def test_nothing_new_leaves_the_file_alone(tmp_path):
    path = tmp_path / "k.code"
    _saved(path, SOURCE)
    os.utime(path, (1, 1))
    cache = CodeCache(path)
    cache.compile(SOURCE, NAME)
    cache.save()
    assert os.stat(path).st_mtime == 1


def test_a_few_new_blocks_do_not_rewrite_the_file_many_do(tmp_path, monkeypatch):
    path = tmp_path / "k.code"
    _saved(path, SOURCE)
    monkeypatch.setattr(codecache_module, "SAVE_MIN_NEW", 3)
    sources = [f"def block(x):\n    return x + {n}\n" for n in range(3)]
    _saved(path, *sources[:2])
    check = CodeCache(path)
    check.compile(sources[0], NAME)
    assert check.hits == 0  # two new blocks: the file was left as it was
    later = _saved(path, *sources)
    assert later.compiled == 3
    again = CodeCache(path)
    for source in [SOURCE] + sources:
        again.compile(source, NAME)
    assert (again.hits, again.compiled) == (4, 0)


def test_this_boots_entries_come_first_when_the_file_is_full(tmp_path, monkeypatch):
    path = tmp_path / "k.code"
    old = "def block(x):\n    return x - 1\n"
    _saved(path, old)
    blob = len(marshal.dumps(compile(SOURCE, NAME, "exec")))
    monkeypatch.setattr(codecache_module, "MAX_BYTES", blob + 8)  # room for one entry
    monkeypatch.setattr(codecache_module, "SAVE_MIN_NEW", 1)
    _saved(path, SOURCE)
    cache = CodeCache(path)
    cache.compile(SOURCE, NAME)
    cache.compile(old, NAME)
    assert (cache.hits, cache.compiled) == (1, 1)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "other python", "not a dict", "not zlib"])
def test_a_damaged_or_foreign_file_is_ignored_with_a_warning(tmp_path, caplog, damage):
    path = tmp_path / "k.code"
    _saved(path, SOURCE)
    data = bytearray(path.read_bytes())
    header = len(codecache_module._header())
    if damage == "flipped byte":
        data[header + len(data[header:]) // 2] ^= 0xFF
    elif damage == "truncated":
        del data[header + 20:]
    elif damage == "other python":
        data[header - 1] ^= 0xFF  # the bytecode magic number
    elif damage == "not a dict":
        data[header:] = zlib.compress(marshal.dumps([b"k", b"v"]))
    else:
        data[header:] = b"garbage" * 10
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.codecache"):
        cache = CodeCache(path)
    assert "ignoring the translated code" in caplog.text
    assert _run(cache.compile(SOURCE, NAME)) == 16
    assert (cache.hits, cache.compiled) == (0, 1)
    cache.save()  # and the next boot has a good file again
    assert CodeCache(path).compile(SOURCE, NAME) is not None


def test_an_entry_that_is_not_code_is_compiled_anew(tmp_path):
    path = tmp_path / "k.code"
    cache = _saved(path, SOURCE)
    key = next(iter(cache.previous))
    payload = marshal.dumps({key: marshal.dumps("not code")})
    path.write_bytes(codecache_module._header() + zlib.compress(payload))
    again = CodeCache(path)
    assert _run(again.compile(SOURCE, NAME)) == 16
    assert (again.hits, again.compiled) == (0, 1)


def test_a_failed_write_warns_and_is_not_fatal(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    cache = CodeCache(blocker / "k.code")  # a directory that cannot be made
    cache.compile(SOURCE, NAME)
    with caplog.at_level(logging.WARNING, logger="pyhv.accel.tcg.codecache"):
        cache.save()
    assert "cannot save the software CPU's translated code" in caplog.text


def test_code_files_are_per_python_and_the_oldest_are_pruned(tmp_path, monkeypatch):
    path = code_cache_path(tmp_path / "0123456789abcdef.json")
    assert path.parent == tmp_path and path.name.startswith("0123456789abcdef.")
    assert codecache_module.CODE_FILE_NAME.fullmatch(path.name)
    monkeypatch.setattr(codecache_module, "MAX_FILES", 2)
    for index in range(3):
        stale = tmp_path / f"{index:016x}.other-tag.code"
        stale.write_bytes(b"")
        os.utime(stale, (index + 1, index + 1))
    (tmp_path / "notes.code").write_bytes(b"")  # not named as pyhv names them: kept
    _saved(path, SOURCE)
    assert sorted(p.name for p in tmp_path.glob("*.code")) == sorted(
        [path.name, f"{2:016x}.other-tag.code", "notes.code"])


@needs_as
def test_a_cpu_runs_loaded_code_as_it_ran_compiled_code(tmp_path):
    path = tmp_path / "k.code"
    results = []
    for _boot in range(2):
        memory, cpu = long_mode_cpu(assemble(LOOP))
        cpu.translate_after = 4
        cpu.translator.code_cache = CodeCache(path)
        cpu.run(10_000)
        registers = cpu.registers()
        results.append((registers["rax"], registers["rdx"], cpu.translator.translated,
                        cpu.translator.code_cache.hits, cpu.translator.code_cache.compiled))
        cpu.translator.code_cache.save()
    (rax, rdx, translated, hits, compiled), second = results
    assert rax == 500 * 7 and translated >= 1 and (hits, compiled) == (0, translated)
    assert second[:3] == (rax, rdx, translated)
    assert second[3:] == (translated, 0)


def test_the_accelerator_keeps_code_beside_the_hints_on_every_python(tmp_path):
    from pyhv.accel.base import Platform
    from pyhv.accel.tcg.accel import TcgAccelerator
    from pyhv.bus import Bus
    from pyhv.cpu_model import pyhv64
    from pyhv.lifecycle import Lifecycle
    from pyhv.memory import GuestMemory, MiB

    hints = tmp_path / "0123456789abcdef.json"
    platform = Platform(GuestMemory(4 * MiB), Bus("pio"), Bus("mmio"), Lifecycle(), pyhv64(),
                        tcg_hints=hints)
    accel = TcgAccelerator(platform)
    try:
        assert accel.cpu.translator.code_cache.path == code_cache_path(hints)
        accel.cpu.translator.code_cache.compile(SOURCE, NAME)
    finally:
        accel.close()
        platform.memory.close()
    assert CodeCache(code_cache_path(hints)).previous
    without = Platform(GuestMemory(4 * MiB), Bus("pio"), Bus("mmio"), Lifecycle(), pyhv64())
    accel = TcgAccelerator(without)
    assert accel.cpu.translator.code_cache is None
    accel.close()
    without.memory.close()

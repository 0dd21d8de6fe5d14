"""Helpers that run Debian's ``iasl`` (acpica-tools) as the oracle for AML and table bytes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

TABLE_HEADER_SIZE = 36
# Words in iasl's output that mean it found something wrong with a table.
COMPLAINTS = ("warning", "error", "incorrect", "invalid", "unknown")


def _iasl() -> str:
    path = shutil.which("iasl")
    if path is None:
        pytest.skip("iasl not installed (Debian package acpica-tools)")
    return path


@pytest.fixture
def compile_asl(tmp_path: Path) -> Callable[[str], bytes]:
    """``compile_asl(asl)``: the AML body (header stripped) iasl makes of ``asl`` placed in a
    DSDT, compiled with -on so that name paths are emitted as written."""
    iasl = _iasl()

    def run(asl: str) -> bytes:
        source = tmp_path / "snippet.asl"
        source.write_text('DefinitionBlock ("", "DSDT", 2, "PYHV  ", "TEST    ", 1)\n{\n' + asl + "\n}\n")
        result = subprocess.run([iasl, "-on", "-p", str(tmp_path / "snippet"), str(source)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return (tmp_path / "snippet.aml").read_bytes()[TABLE_HEADER_SIZE:]

    return run


@pytest.fixture
def disassemble(tmp_path: Path) -> Callable[[str, bytes], str]:
    """``disassemble(name, table)``: iasl -d's listing of a binary table; fails the test if
    iasl complains about anything (checksum, length, names, unknown fields)."""
    iasl = _iasl()

    def run(name: str, table: bytes) -> str:
        binary = tmp_path / f"{name}.dat"
        binary.write_bytes(table)
        result = subprocess.run([iasl, "-d", str(binary)], capture_output=True, text=True, cwd=tmp_path)
        messages = result.stdout + result.stderr
        assert result.returncode == 0, messages
        listing = (tmp_path / f"{name}.dsl").read_text()
        for text in (messages, listing):
            lowered = text.lower()
            for word in COMPLAINTS:
                assert word not in lowered, f"iasl -d {name}: '{word}' in:\n{text}"
        return listing

    return run

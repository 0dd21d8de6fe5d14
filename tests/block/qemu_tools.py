"""Shared helpers for block tests: qemu-img/qemu-io as the peer and oracle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import List

import pytest

HAVE_QEMU_IMG = shutil.which("qemu-img") is not None and shutil.which("qemu-io") is not None
needs_qemu = pytest.mark.skipif(not HAVE_QEMU_IMG,
                                reason="qemu-img/qemu-io (Debian qemu-utils) not installed")


def qemu_img(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=check)


def qemu_io(path: str, commands: List[str], fmt: str = "qcow2") -> None:
    argv = ["qemu-io", "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    result = subprocess.run(argv + [path], capture_output=True, text=True)
    assert result.returncode == 0 and "error" not in result.stdout.lower(), result.stdout + \
        result.stderr


def qemu_check(path: str) -> dict:
    """qemu-img check's JSON; asserts it found no corruption and no check error."""
    result = qemu_img("check", "--output=json", path, check=False)
    assert result.returncode in (0, 3), result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report.get("corruptions", 0) == 0 and report["check-errors"] == 0, report
    return report


def qemu_read_raw(path: str, out: str) -> bytes:
    qemu_img("convert", "-O", "raw", path, out)
    with open(out, "rb") as f:
        return f.read()


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def pattern(seed: int, length: int) -> bytes:
    """Deterministic incompressible-ish bytes."""
    import random
    return random.Random(seed).getrandbits(8 * length).to_bytes(length, "little") \
        if length else b""


__all__ = ["needs_qemu", "qemu_img", "qemu_io", "qemu_check", "qemu_read_raw", "pattern",
           "write_file", "os"]

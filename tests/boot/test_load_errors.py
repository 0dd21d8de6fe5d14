"""Files that are not kernels: each gets a BootError naming the file, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyhv.boot import load_kernel
from pyhv.errors import BootError
from pyhv.memory import GuestMemory


def test_text_file(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = tmp_path / "README.txt"
    kernel.write_text("This is not a kernel.\n" * 50)
    with pytest.raises(BootError, match=r"README.txt: not a kernel pyhv can boot \(no bzImage 'HdrS'"):
        load_kernel(memory, kernel)


@pytest.mark.parametrize("size", [0, 1, 100, 9000, 100_000])
def test_random_bytes(tmp_path: Path, memory: GuestMemory, size: int) -> None:
    kernel = tmp_path / "noise.bin"
    data = bytearray(os.urandom(size))
    if size > 0x206:
        data[0x202:0x206] = b"XXXX"  # keep the bzImage magic out of the random bytes
    kernel.write_bytes(bytes(data))
    with pytest.raises(BootError, match="noise.bin: not a kernel"):
        load_kernel(memory, kernel)


def test_missing_file(tmp_path: Path, memory: GuestMemory) -> None:
    with pytest.raises(BootError, match=r"kernel .*no-such-kernel: cannot read: No such file"):
        load_kernel(memory, tmp_path / "no-such-kernel")


def test_directory(tmp_path: Path, memory: GuestMemory) -> None:
    with pytest.raises(BootError, match="not a regular file"):
        load_kernel(memory, tmp_path)


def test_kernel_larger_than_ram_is_not_read(tmp_path: Path) -> None:
    memory = GuestMemory(1 << 20)
    kernel = tmp_path / "sparse"
    with kernel.open("wb") as handle:
        handle.truncate(64 << 20)  # sparse: reading it would be the bug
    with pytest.raises(BootError, match=r"sparse: 67108864 bytes is larger than guest RAM \(1 MiB\)"):
        load_kernel(memory, kernel)

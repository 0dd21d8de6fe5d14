"""Vectored positional I/O: one call per scatter-gather list, on both the os and libc (cffi) paths."""

from __future__ import annotations

import os

import pytest

from pyhv.block import fileio

FILE_SIZE = 10_000


@pytest.fixture(params=["os", "libc"])
def path(request, tmp_path, monkeypatch):
    """A file of FILE_SIZE patterned bytes; ``libc`` runs PyPy's cffi path on any runtime."""
    if request.param == "libc":
        monkeypatch.setattr(fileio, "_libc_io", fileio._libc_io or fileio._LibcIo())
    elif not fileio._HAVE_PREADV:
        pytest.skip("this runtime has no os.preadv (PyPy): the libc case covers it")
    target = tmp_path / "data"
    target.write_bytes(bytes(i * 7 % 251 for i in range(FILE_SIZE)))
    return str(target)


def pattern(start: int, length: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(start, start + length))


def views(*sizes: int):
    return [memoryview(bytearray(b"\xaa" * size)) for size in sizes]


def test_preadv_scatters_in_order(path):
    buffers = views(3, 0, 4096, 5)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fileio.preadv_into(fd, buffers, 100) == 3 + 4096 + 5
    finally:
        os.close(fd)
    assert b"".join(bytes(b) for b in buffers) == pattern(100, 3 + 4096 + 5)


def test_preadv_past_end_of_file_reads_zeros(path):
    buffers = views(10, 20, 30)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fileio.preadv_into(fd, buffers, FILE_SIZE - 15) == 15
    finally:
        os.close(fd)
    assert b"".join(bytes(b) for b in buffers) == pattern(FILE_SIZE - 15, 15) + bytes(45)


def test_preadv_more_buffers_than_iov_max(path):
    buffers = views(*[3] * (fileio.IOV_MAX + 7))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fileio.preadv_into(fd, buffers, 1) == 3 * len(buffers)
    finally:
        os.close(fd)
    assert b"".join(bytes(b) for b in buffers) == pattern(1, 3 * len(buffers))


@pytest.mark.parametrize("count, chunk", [
    (1, 5), (3, 6),
    (1, 70_000), (3, 30_000), (fileio.IOV_MAX + 2, 100),  # pwrite, pwritev, pwritev in two calls
])
def test_pwritev_gathers_in_order(path, count, chunk):
    data = [os.urandom(chunk - i % 3) for i in range(count)]
    buffers = [memoryview(bytearray(piece)) for piece in data]
    fd = os.open(path, os.O_RDWR)
    try:
        fileio.pwritev_all(fd, buffers, 50)
    finally:
        os.close(fd)
    written = b"".join(data)
    with open(path, "rb") as f:
        content = f.read()
    assert content[:50] == pattern(0, 50)
    assert content[50:50 + len(written)] == written
    assert content[50 + len(written):] == pattern(50 + len(written), max(0, FILE_SIZE - 50 - len(written)))


def test_pwritev_of_read_only_buffers(path):
    fd = os.open(path, os.O_RDWR)
    try:
        fileio.pwritev_all(fd, [memoryview(b"abc"), memoryview(b""), memoryview(b"de")], FILE_SIZE - 2)
        fileio.pwrite_all(fd, b"xyz", 0)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        content = f.read()
    assert content[:3] == b"xyz" and content[FILE_SIZE - 2:] == b"abcde"


@pytest.mark.parametrize("length", [2, 100_000])
def test_pwrite_all_from_a_writable_buffer(path, length):
    data = os.urandom(length)
    fd = os.open(path, os.O_RDWR)
    try:
        fileio.pwrite_all(fd, bytearray(data), 9)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        content = f.read()
    assert content[8:9] == pattern(8, 1) and content[9:9 + length] == data


def test_errors_are_os_errors(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            fileio.pwritev_all(fd, views(8), 0)  # the file is open read-only: EBADF
    finally:
        os.close(fd)

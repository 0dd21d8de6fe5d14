"""The raw backend: positional I/O, zero-copy vectors, holes for discard and zeroes."""

from __future__ import annotations

import os

import pytest

from pyhv.block import open_image
from pyhv.block.errors import BlockRequestError
from pyhv.block.raw import RawImage


@pytest.fixture
def raw(tmp_path):
    path = str(tmp_path / "disk.raw")
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 4096)
    return path


def test_read_write_roundtrip(raw):
    with open_image(raw, format="raw") as image:
        assert image.size == 1 << 20
        image.write(1000, b"hello")
        assert image.read(998, 9) == bytes([230, 231]) + b"hello" + bytes([237, 238])


def test_readv_writev_into_memoryviews(raw):
    with RawImage(raw) as image:
        first, second = bytearray(3), bytearray(5)
        image.readv(254, [memoryview(first), memoryview(second)])
        assert first + second == bytes([254, 255, 0, 1, 2, 3, 4, 5])
        image.writev(0, [memoryview(b"ab"), memoryview(b"cde")])
        assert image.read(0, 6) == b"abcde" + bytes([5])


def test_discard_and_write_zeroes_read_zero_and_make_holes(raw):
    with RawImage(raw) as image:
        image.write_zeroes(4096, 65536)
        assert image.read(4096, 65536) == bytes(65536)
        image.write_zeroes(70001, 3)
        assert image.read(70000, 5) == bytes([70000 % 256, 0, 0, 0, 70004 % 256])
        image.discard(0, 1 << 20)
        extents = image.block_status(0, image.size)
    assert sum(e.length for e in extents) == 1 << 20
    assert os.stat(raw).st_blocks * 512 < (1 << 20)  # holes were punched


def test_block_status_reports_data_and_holes(tmp_path):
    path = str(tmp_path / "sparse.raw")
    with open(path, "wb") as f:
        f.truncate(1 << 20)
        f.seek(512 << 10)
        f.write(b"x" * 4096)
    with RawImage(path, read_only=True) as image:
        extents = image.block_status(0, image.size)
    data = [e for e in extents if e.data]
    assert len(data) == 1 and data[0].start <= 512 << 10 < data[0].start + data[0].length
    assert all(e.zero for e in extents if not e.data)


def test_out_of_bounds_and_read_only(raw):
    with RawImage(raw, read_only=True) as image:
        with pytest.raises(BlockRequestError, match="outside the disk"):
            image.read((1 << 20) - 2, 4)
        with pytest.raises(BlockRequestError, match="read-only"):
            image.write(0, b"x")


def test_truncate_grows(raw):
    with RawImage(raw) as image:
        image.truncate(2 << 20)
        assert image.size == 2 << 20
        assert image.read((2 << 20) - 10, 10) == bytes(10)

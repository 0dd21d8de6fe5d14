"""Malformed qcow2 images are refused with an error naming the file and the problem."""

from __future__ import annotations

import os
import struct

import pytest

from pyhv.block import ImageFormatError, open_image
from pyhv.block.errors import BlockError
from pyhv.block.qcow2 import create_qcow2

MiB = 1 << 20


@pytest.fixture
def good(tmp_path):
    path = str(tmp_path / "good.qcow2")
    create_qcow2(path, 4 * MiB)
    return path


def _patch(path: str, offset: int, fmt: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def _refused(path: str, *words: str, read_only: bool = True) -> str:
    with pytest.raises(BlockError) as info:
        open_image(path, format="qcow2", read_only=read_only)
    message = str(info.value)
    assert path in message
    for word in words:
        assert word in message, message
    return message


def test_truncated_header(good):
    with open(good, "r+b") as f:
        f.truncate(40)
    _refused(good, "truncated")


def test_truncated_v3_header(good):
    with open(good, "r+b") as f:
        f.truncate(90)
    _refused(good, "truncated", "v3")


def test_bad_version(good):
    _patch(good, 4, ">I", 7)
    _refused(good, "version 7")


@pytest.mark.parametrize("bits", [0, 8, 22, 63])
def test_absurd_cluster_bits(good, bits):
    _patch(good, 20, ">I", bits)
    _refused(good, f"cluster_bits {bits}")


def test_l1_table_beyond_file(good):
    _patch(good, 40, ">Q", 1 << 40)
    _refused(good, "L1 table", "beyond the end")


def test_refcount_table_beyond_file(good):
    _patch(good, 48, ">Q", 1 << 40)
    _refused(good, "refcount table", "beyond the end")


def test_unaligned_refcount_table(good):
    _patch(good, 48, ">Q", 65536 + 8)
    _refused(good, "refcount table", "multiple of the cluster size")


def test_absurd_l1_size_no_huge_allocation(good):
    _patch(good, 36, ">I", 0xFFFFFFFF)
    _refused(good, "l1_size", "too large")


def test_l1_too_small_for_size(good):
    _patch(good, 24, ">Q", 1 << 50)
    _refused(good, "l1_size", "too small")


def test_absurd_virtual_size(good):
    _patch(good, 24, ">Q", (1 << 64) - 1)
    _refused(good, "virtual size")


def test_absurd_refcount_table_clusters(good):
    _patch(good, 56, ">I", 0x7FFFFFFF)
    _refused(good, "refcount_table_clusters")


def test_unknown_incompatible_feature(good):
    _patch(good, 72, ">Q", 1 << 20)
    _refused(good, "unsupported qcow2 feature", "bit 20")


def test_extended_l2_refused(good):
    _patch(good, 72, ">Q", 1 << 4)
    _refused(good, "extended L2")


def test_external_data_file_refused(good):
    _patch(good, 72, ">Q", 1 << 2)
    _refused(good, "external data file")


def test_zstd_compression_refused(tmp_path):
    path = str(tmp_path / "z.qcow2")
    create_qcow2(path, MiB)
    _patch(path, 72, ">Q", 1 << 3)
    _patch(path, 100, ">I", 112)
    with open(path, "r+b") as f:
        f.seek(104)
        f.write(b"\x01")
    _refused(path, "zstd")


def test_corrupt_bit_refuses_writes_only(good):
    _patch(good, 72, ">Q", 1 << 1)
    _refused(good, "marked corrupt", read_only=False)
    open_image(good, format="qcow2", read_only=True).close()


def test_encryption_refused(good):
    _patch(good, 32, ">I", 1)
    _refused(good, "encrypted")


def test_header_extension_overrun(good):
    with open(good, "r+b") as f:
        f.seek(104)
        f.write(struct.pack(">II", 0x12345678, 1 << 20))
    _refused(good, "header extension", "runs past")


def test_cyclic_backing_chain(tmp_path):
    a, b = str(tmp_path / "a.qcow2"), str(tmp_path / "b.qcow2")
    create_qcow2(a, MiB, backing_file="b.qcow2", backing_format="qcow2")
    create_qcow2(b, MiB, backing_file="a.qcow2", backing_format="qcow2")
    with pytest.raises(ImageFormatError, match="cyclic"):
        open_image(a, read_only=True)


def test_self_backing(tmp_path):
    a = str(tmp_path / "self.qcow2")
    create_qcow2(a, MiB, backing_file="self.qcow2", backing_format="qcow2")
    with pytest.raises(ImageFormatError, match="cyclic"):
        open_image(a, read_only=True)


def test_deep_backing_chain_limit(tmp_path):
    previous = None
    for level in range(40):
        path = str(tmp_path / f"l{level}.qcow2")
        create_qcow2(path, MiB, backing_file=previous, backing_format="qcow2" if previous
                     else None)
        previous = os.path.basename(path)
    with pytest.raises(ImageFormatError, match="deeper than"):
        open_image(path, read_only=True)


def test_missing_backing_file(tmp_path):
    path = str(tmp_path / "orphan.qcow2")
    create_qcow2(path, MiB, backing_file="nowhere.qcow2", backing_format="qcow2")
    with pytest.raises(BlockError, match="nowhere.qcow2"):
        open_image(path, read_only=True)


def test_l2_table_beyond_file_on_read(good):
    with open(good, "r+b") as f:
        f.seek(40)
        l1_offset = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1_offset)
        f.write(struct.pack(">Q", (1 << 63) | (1 << 40)))
    with open_image(good, format="qcow2", read_only=True) as image:
        with pytest.raises(ImageFormatError, match="L2 table at offset .* beyond the end"):
            image.read(0, 512)


def test_out_of_range_request(good):
    with open_image(good, read_only=True) as image:
        with pytest.raises(BlockError, match="outside the disk"):
            image.read(4 * MiB - 1, 2)


def test_write_to_read_only(good):
    with open_image(good, read_only=True) as image:
        with pytest.raises(BlockError, match="read-only"):
            image.write(0, b"x")


def test_writable_probe_as_raw_refused(tmp_path):
    path = str(tmp_path / "disk.img")
    with open(path, "wb") as f:
        f.write(bytes(4096))
    with pytest.raises(BlockError, match="probed as raw"):
        open_image(path, read_only=False)
    open_image(path, format="raw", read_only=False).close()

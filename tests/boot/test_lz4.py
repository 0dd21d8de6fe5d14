"""The pure-Python LZ4 decoder against the lz4 package (CPython) and Debian's lz4 tool."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boot_images import compressible_bytes, lz4_legacy_with_cli
from pyhv.boot.lz4 import LEGACY_MAGIC, Lz4Error, decompress_block_py, decompress_legacy

try:
    import lz4.block as lz4_block
except ImportError:
    lz4_block = None

needs_lz4_package = pytest.mark.skipif(lz4_block is None, reason="the lz4 package is not installed (PyPy venv)")


@needs_lz4_package
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_round_trip_through_lz4_package(data: bytes) -> None:
    block = lz4_block.compress(data, store_size=False)
    assert decompress_block_py(block, len(data)) == data


@needs_lz4_package
@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=200_000))
def test_compressible_data_matches_lz4_package(seed: int, size: int) -> None:
    data = compressible_bytes(size, seed)
    for mode in ("default", "high_compression"):
        block = lz4_block.compress(data, mode=mode, store_size=False)
        assert decompress_block_py(block, len(data)) == data


@needs_lz4_package
def test_overlapping_match_expands_a_run() -> None:
    data = b"ab" * 5000 + b"x" * 70000
    block = lz4_block.compress(data, store_size=False)
    assert len(block) < 1000  # long overlapping matches were used
    assert decompress_block_py(block, len(data)) == data


def test_legacy_frame_from_lz4_tool_decodes_in_pure_python() -> None:
    data = compressible_bytes(9 * (1 << 20) + 12345, seed=7) + os.urandom(5000)
    frame = lz4_legacy_with_cli(data)
    if frame is None:
        pytest.skip("Debian's lz4 tool is not installed (apt-get install lz4)")
    assert frame.startswith(LEGACY_MAGIC)
    # More than one 8 MiB block, plus the kernel's 4-byte size trailer.
    assert decompress_legacy(frame + struct.pack("<I", len(data)), len(data), use_fast=False) == data


def test_hand_assembled_block() -> None:
    # token 0x31: 3 literals "abc", match length 1+4 at offset 3; then 0x40: 4 literals "wxyz".
    block = bytes([0x31]) + b"abc" + struct.pack("<H", 3) + bytes([0x40]) + b"wxyz"
    assert decompress_block_py(block, 100) == b"abc" + b"abcab" + b"wxyz"


def test_extended_literal_and_match_lengths() -> None:
    literals = bytes(range(256)) * 2  # 512 literals: 15 + 255 + 242
    block = (bytes([0xFF, 255, 242]) + literals + struct.pack("<H", 1) + bytes([255, 10])
             + bytes([0x10]) + b"!")
    expected = literals + literals[-1:] * (15 + 255 + 10 + 4) + b"!"
    assert decompress_block_py(block, len(expected)) == expected


@pytest.mark.parametrize("block, problem", [
    (b"", "no token"),
    (bytes([0x50]) + b"ab", "literal run"),
    (bytes([0x10]) + b"a" + b"\x05", "match offset"),
    (bytes([0x10]) + b"a" + struct.pack("<H", 2) + bytes([0x10]) + b"z", "reaches before"),
    (bytes([0x10]) + b"a" + struct.pack("<H", 0) + bytes([0x10]) + b"z", "match offset 0"),
    (bytes([0xF0]), "literal length"),
    (bytes([0x1F]) + b"a" + struct.pack("<H", 1), "match length"),
])
def test_corrupt_blocks_are_refused(block: bytes, problem: str) -> None:
    with pytest.raises(Lz4Error, match=problem):
        decompress_block_py(block, 1 << 20)


def test_output_cap_stops_a_decompression_bomb() -> None:
    # One literal then a match of ~64 KiB, repeated: tiny input, large output.
    sequence = bytes([0x1F]) + b"a" + struct.pack("<H", 1) + bytes([255] * 256 + [0])
    block = sequence * 100 + bytes([0x10]) + b"z"
    with pytest.raises(Lz4Error, match="more than 4096 bytes"):
        decompress_block_py(block, 4096)


def test_legacy_frame_errors() -> None:
    with pytest.raises(Lz4Error, match="not an LZ4 legacy frame"):
        decompress_legacy(b"\x04\x22\x4d\x18" + bytes(8), 100)
    with pytest.raises(Lz4Error, match="truncated: block at offset 4 claims 100 bytes"):
        decompress_legacy(LEGACY_MAGIC + struct.pack("<I", 100) + b"abc" * 5, 1000, use_fast=False)
    with pytest.raises(Lz4Error, match="stray bytes"):
        decompress_legacy(LEGACY_MAGIC + b"\x01\x02", 1000, use_fast=False)
    valid_block = bytes([0x40]) + b"wxyz"
    frame = LEGACY_MAGIC + struct.pack("<I", len(valid_block)) + valid_block
    assert decompress_legacy(frame, 1000, use_fast=False) == b"wxyz"
    with pytest.raises(Lz4Error, match="more than 3 bytes"):
        decompress_legacy(frame, 3, use_fast=False)

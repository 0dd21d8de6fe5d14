"""Payload format detection and decompression, including corrupt and oversized payloads."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import sys

import pytest

from boot_images import compressible_bytes, lz4_legacy_with_cli
from pyhv.boot import decompress as codec
from pyhv.errors import BootError

DATA = compressible_bytes(300_000, seed=3)
TRAILER = struct.pack("<I", len(DATA))  # what the kernel build appends after every payload


def _lzma_alone(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_ALONE)


def _zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard", reason="zstandard is not installed (PyPy venv)")
    return zstandard.ZstdCompressor(level=19).compress(data)


def _lz4(data: bytes) -> bytes:
    frame = lz4_legacy_with_cli(data)
    if frame is None:
        pytest.skip("Debian's lz4 tool is not installed")
    return frame


COMPRESSORS = {
    "gzip": gzip.compress,
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "lzma": _lzma_alone,
    "bzip2": bz2.compress,
    "zstd": _zstd,
    "lz4": _lz4,
}


@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_each_format_is_detected_and_decompressed(fmt: str) -> None:
    payload = COMPRESSORS[fmt](DATA) + TRAILER
    assert codec.detect_format(payload) == fmt
    assert codec.decompress(payload, len(DATA)) == (fmt, DATA)


@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_truncated_payload_is_refused(fmt: str) -> None:
    payload = COMPRESSORS[fmt](DATA)
    with pytest.raises(codec.DecompressError, match=f"(?i){fmt}"):
        codec.decompress(payload[:len(payload) // 2], len(DATA))


@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_corrupted_payload_is_refused(fmt: str) -> None:
    payload = bytearray(COMPRESSORS[fmt](DATA))
    middle = len(payload) // 2
    payload[middle:middle + 2000] = b"\xff" * 2000
    with pytest.raises(codec.DecompressError):
        codec.decompress(bytes(payload), len(DATA))


@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_output_beyond_the_limit_is_refused(fmt: str) -> None:
    bomb = COMPRESSORS[fmt](bytes(4 << 20))
    with pytest.raises(codec.DecompressError, match="more than"):
        codec.decompress(bomb, 1 << 20)


def test_unknown_and_unsupported_formats() -> None:
    with pytest.raises(codec.DecompressError, match="unknown compression .payload starts with 00112233"):
        codec.decompress(bytes.fromhex("0011223344556677"), 100)
    with pytest.raises(codec.DecompressError, match="lzo-compressed kernels are not supported"):
        codec.decompress(b"\x89LZO\x00\r\n\x1a\n" + bytes(16), 100)
    assert issubclass(codec.DecompressError, BootError)


def test_missing_zstandard_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # makes "import zstandard" fail
    with pytest.raises(codec.DecompressError, match=r"pip install pyhv\[fast\]"):
        codec.decompress(b"\x28\xb5\x2f\xfd" + bytes(16), 100)

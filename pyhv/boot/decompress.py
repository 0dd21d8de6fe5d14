"""Host-side decompression of a bzImage payload, the compressed vmlinux.

The format is recognised by its magic, as the kernel's own decompressor would: gzip, xz,
lzma, bzip2 from the standard library; LZ4 through :mod:`pyhv.boot.lz4`; zstd through the
``zstandard`` package when it is installed. Output is capped so that corrupt or hostile
data cannot make the host allocate more than the guest could hold.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Callable, Dict, Optional, Tuple

from ..errors import BootError
from . import lz4

GZIP = "gzip"
XZ = "xz"
LZMA = "lzma"
BZIP2 = "bzip2"
LZ4 = "lz4"
ZSTD = "zstd"
LZO = "lzo"

ZSTD_FEED_SIZE = 1024

_MAGICS: Tuple[Tuple[bytes, str], ...] = (
    (b"\x1f\x8b", GZIP),
    (b"\xfd7zXZ\x00", XZ),
    (b"\x5d\x00\x00", LZMA),
    (b"BZh", BZIP2),
    (lz4.LEGACY_MAGIC, LZ4),
    (b"\x28\xb5\x2f\xfd", ZSTD),
    (b"\x89LZO", LZO),
)


class DecompressError(BootError):
    """A compressed kernel payload is corrupt, unsupported, or too large."""


def detect_format(data: bytes) -> Optional[str]:
    """The compression format of ``data`` by its magic, or None."""
    for magic, name in _MAGICS:
        if data.startswith(magic):
            return name
    return None


def _stream(decompressor: object, data: bytes, max_output: int, name: str) -> bytes:
    """Run a stdlib streaming decompressor with an output cap; trailing bytes are ignored
    because the kernel build appends the uncompressed size after the stream."""
    out = decompressor.decompress(data, max_output + 1)  # type: ignore[attr-defined]
    if len(out) > max_output:
        raise DecompressError(f"{name} payload decompresses to more than {max_output} bytes")
    if not decompressor.eof:  # type: ignore[attr-defined]
        raise DecompressError(f"{name} payload is truncated (stream ends before its end marker)")
    return out


def _gzip(data: bytes, max_output: int) -> bytes:
    return _stream(zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), data, max_output, GZIP)


def _xz(data: bytes, max_output: int) -> bytes:
    return _stream(lzma.LZMADecompressor(format=lzma.FORMAT_XZ), data, max_output, XZ)


def _lzma(data: bytes, max_output: int) -> bytes:
    return _stream(lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), data, max_output, LZMA)


def _bzip2(data: bytes, max_output: int) -> bytes:
    return _stream(bz2.BZ2Decompressor(), data, max_output, BZIP2)


def _lz4(data: bytes, max_output: int) -> bytes:
    return lz4.decompress_legacy(data, max_output)


def _zstd(data: bytes, max_output: int) -> bytes:
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        raise DecompressError(
            "the kernel payload is zstd-compressed and the zstandard package is not installed: "
            "pip install pyhv[fast], or let the guest decompress itself (decompress=False)"
        ) from None
    # decompressobj() has no output cap, so feed it small pieces and check as it grows:
    # one KiB of zstd input expands to tens of MiB at most.
    reader = zstandard.ZstdDecompressor().decompressobj()
    pieces = []
    produced = 0
    try:
        for start in range(0, len(data), ZSTD_FEED_SIZE):
            piece = reader.decompress(data[start:start + ZSTD_FEED_SIZE])
            produced += len(piece)
            pieces.append(piece)
            if produced > max_output:
                raise DecompressError(f"zstd payload decompresses to more than {max_output} bytes")
            if reader.eof:
                break
    except zstandard.ZstdError as err:
        raise DecompressError(f"corrupt zstd payload: {err}") from err
    if not reader.eof:
        raise DecompressError("zstd payload is truncated (frame ends early)")
    out = b"".join(pieces)
    return out


_DECODERS: Dict[str, Callable[[bytes, int], bytes]] = {
    GZIP: _gzip,
    XZ: _xz,
    LZMA: _lzma,
    BZIP2: _bzip2,
    LZ4: _lz4,
    ZSTD: _zstd,
}


def decompress(data: bytes, max_output: int) -> Tuple[str, bytes]:
    """Decompress a kernel payload; return (format name, decompressed bytes)."""
    fmt = detect_format(data)
    if fmt is None:
        raise DecompressError(f"unknown compression (payload starts with {bytes(data[:6]).hex()})")
    decoder = _DECODERS.get(fmt)
    if decoder is None:
        raise DecompressError(f"{fmt}-compressed kernels are not supported for host-side decompression")
    try:
        return fmt, decoder(data, max_output)
    except DecompressError:
        raise
    except BootError as err:  # Lz4Error and friends: same family, keep their message
        raise DecompressError(str(err)) from err
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as err:
        raise DecompressError(f"corrupt {fmt} payload: {err}") from err

"""LZ4 decoding: the block format and the legacy frame that Linux uses for LZ4 kernels.

The legacy frame (magic 02 21 4C 18) is a sequence of blocks, each preceded by its
compressed size as a little-endian u32 and decompressing to at most 8 MiB. The kernel
build appends the uncompressed size as a 4-byte trailer after the last block.

``lz4.block`` (the ``lz4`` package) does the work when it is importable; otherwise the
pure-Python block decoder below does, so PyPy needs no C extension.
"""

from __future__ import annotations

import struct
from typing import Callable, List, Optional

from ..errors import BootError

LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LEGACY_BLOCK_SIZE = 8 << 20
MIN_MATCH = 4


class Lz4Error(BootError):
    """LZ4 data is corrupt or would decompress past the allowed size."""


def decompress_block_py(src: bytes, max_output: int) -> bytearray:
    """Decode one LZ4 block in pure Python; the output may not exceed ``max_output`` bytes."""
    src = bytes(src)
    end_in = len(src)
    out = bytearray()
    pos = 0
    # The loop is the hot path on PyPy (~50 MiB for a distribution kernel): locals only,
    # slices instead of byte loops, and overlapping matches expanded by repetition.
    while True:
        if pos >= end_in:
            raise Lz4Error(f"LZ4 block truncated: no token at input offset {pos}")
        token = src[pos]
        pos += 1
        literal_len = token >> 4
        if literal_len == 15:
            while True:
                if pos >= end_in:
                    raise Lz4Error(f"LZ4 block truncated inside a literal length at input offset {pos}")
                extra = src[pos]
                pos += 1
                literal_len += extra
                if extra != 255:
                    break
        if literal_len:
            literal_end = pos + literal_len
            if literal_end > end_in:
                raise Lz4Error(
                    f"LZ4 block truncated: literal run of {literal_len} bytes at input offset {pos} "
                    f"passes the end of the block ({end_in} bytes)"
                )
            out += src[pos:literal_end]
            pos = literal_end
            if len(out) > max_output:
                raise Lz4Error(f"LZ4 block decompresses to more than {max_output} bytes")
        if pos == end_in:
            return out  # the last sequence carries literals only
        if pos + 2 > end_in:
            raise Lz4Error(f"LZ4 block truncated inside a match offset at input offset {pos}")
        offset = src[pos] | (src[pos + 1] << 8)
        pos += 2
        produced = len(out)
        if offset == 0 or offset > produced:
            raise Lz4Error(
                f"LZ4 match offset {offset} at input offset {pos - 2} reaches before the start "
                f"of the output ({produced} bytes so far)"
            )
        match_len = token & 15
        if match_len == 15:
            while True:
                if pos >= end_in:
                    raise Lz4Error(f"LZ4 block truncated inside a match length at input offset {pos}")
                extra = src[pos]
                pos += 1
                match_len += extra
                if extra != 255:
                    break
        match_len += MIN_MATCH
        if produced + match_len > max_output:
            raise Lz4Error(f"LZ4 block decompresses to more than {max_output} bytes")
        start = produced - offset
        if match_len <= offset:
            out += out[start:start + match_len]
        else:
            pattern = out[start:produced]
            repeats, rest = divmod(match_len, offset)
            out += pattern * repeats
            if rest:
                out += pattern[:rest]


def _block_decoder() -> Callable[[bytes, int], bytes]:
    try:
        import lz4.block as fast_block  # type: ignore[import-not-found]
    except ImportError:
        return decompress_block_py

    def decode(src: bytes, max_output: int) -> bytes:
        # A legacy block never exceeds 8 MiB, so decode into that and check the cap after:
        # the C decoder reports "too small a buffer" and corrupt data alike.
        try:
            out = fast_block.decompress(src, uncompressed_size=max(max_output, LEGACY_BLOCK_SIZE))
        except Exception as err:  # lz4.block raises its own LZ4BlockError
            raise Lz4Error(f"corrupt LZ4 block: {err}") from err
        if len(out) > max_output:
            raise Lz4Error(f"LZ4 block decompresses to more than {max_output} bytes")
        return out

    return decode


def decompress_legacy(data: bytes, max_output: int, use_fast: Optional[bool] = None) -> bytes:
    """Decode an LZ4 legacy frame (as written by ``lz4 -l`` and the kernel build).

    ``use_fast`` forces (True) or forbids (False) the ``lz4`` package; None picks it when
    importable. Raises :class:`Lz4Error` on corrupt data or output beyond ``max_output``.
    """
    if data[:4] != LEGACY_MAGIC:
        raise Lz4Error(f"not an LZ4 legacy frame: magic {data[:4].hex()} instead of {LEGACY_MAGIC.hex()}")
    if use_fast is False:
        decode: Callable[[bytes, int], bytes] = decompress_block_py
    else:
        decode = _block_decoder()
        if use_fast and decode is decompress_block_py:
            raise Lz4Error("the lz4 package is not installed (pip install pyhv[fast])")
    view = memoryview(data)
    # The blocks, joined once at the end: growing one buffer and copying it out cost PyPy
    # two more copies of a 50 MiB kernel.
    blocks: List[bytes] = []
    produced = 0
    pos = 4
    total = len(data)
    while pos < total:
        remaining = total - pos
        if remaining < 4:
            raise Lz4Error(f"LZ4 frame has {remaining} stray bytes at offset {pos}")
        (block_size,) = struct.unpack_from("<I", data, pos)
        if data[pos:pos + 4] == LEGACY_MAGIC:
            pos += 4  # concatenated frames
            continue
        if pos + 4 + block_size > total:
            if remaining == 4:
                break  # the kernel's uncompressed-size trailer
            raise Lz4Error(
                f"LZ4 frame truncated: block at offset {pos} claims {block_size} bytes, "
                f"{remaining - 4} left"
            )
        if block_size == 0:
            raise Lz4Error(f"LZ4 frame has an empty block at offset {pos}")
        budget = min(LEGACY_BLOCK_SIZE, max_output - produced)
        if budget <= 0:
            raise Lz4Error(f"LZ4 data decompresses to more than {max_output} bytes")
        block = decode(bytes(view[pos + 4:pos + 4 + block_size]), budget)
        blocks.append(block)
        produced += len(block)
        pos += 4 + block_size
    return b"".join(blocks)

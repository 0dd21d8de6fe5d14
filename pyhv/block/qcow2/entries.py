"""qcow2 L1/L2 entry bits and compressed-cluster descriptors (qcow2.txt, "Cluster mapping")."""

from __future__ import annotations

import zlib
from typing import Tuple

from ..errors import ImageCorruptError

OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55: host offset of an L2 table or data cluster
COPIED = 1 << 63  # refcount is exactly one: may be written in place
COMPRESSED = 1 << 62
ZERO = 1  # v3: reads as zeros

UNALLOCATED, NORMAL, ZERO_CLUSTER, COMPRESSED_CLUSTER = range(4)


def classify(entry: int, version: int) -> int:
    if entry & COMPRESSED:
        return COMPRESSED_CLUSTER
    if version >= 3 and entry & ZERO:
        return ZERO_CLUSTER
    if entry & OFFSET_MASK:
        return NORMAL
    return UNALLOCATED


def compressed_location(entry: int, cluster_bits: int) -> Tuple[int, int]:
    """(host offset, byte length) of a compressed cluster's deflate stream."""
    offset_bits = 62 - (cluster_bits - 8)
    host = entry & ((1 << offset_bits) - 1)
    sectors = ((entry >> offset_bits) & ((1 << (cluster_bits - 8)) - 1)) + 1
    return host, sectors * 512 - (host & 511)


def compressed_entry(host: int, length: int, cluster_bits: int) -> int:
    offset_bits = 62 - (cluster_bits - 8)
    extra_sectors = (host + length - 1) // 512 - host // 512
    return COMPRESSED | (extra_sectors << offset_bits) | host


def inflate_cluster(data: bytes, cluster_size: int, where: str) -> bytes:
    # wbits -15 also decodes streams made with QEMU's smaller (-12) window
    try:
        out = zlib.decompressobj(-15).decompress(data, cluster_size)
    except zlib.error as err:
        raise ImageCorruptError(f"{where}: compressed cluster does not inflate: {err}") from err
    if len(out) != cluster_size:
        raise ImageCorruptError(
            f"{where}: compressed cluster inflates to {len(out)} bytes, not {cluster_size}")
    return out


def deflate_cluster(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -12)
    return compressor.compress(data) + compressor.flush()

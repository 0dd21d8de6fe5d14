"""Creating empty qcow2 images (``pyhv img create -f qcow2``)."""

from __future__ import annotations

import os
import struct
from typing import Optional

from .. import fileio
from ..errors import BlockError, BlockOptionError
from .header import (COMPAT_LAZY_REFCOUNTS, MAX_BACKING_NAME, MAX_L1_BYTES, V2_HEADER_LENGTH,
                     V3_HEADER_LENGTH, Qcow2Header)
from .refcount import encode_block


def create_qcow2(path: str, size: int, cluster_size: int = 65536, version: int = 3,
                 backing_file: Optional[str] = None, backing_format: Optional[str] = None,
                 lazy_refcounts: bool = False, refcount_bits: int = 16) -> None:
    """Write a new, empty qcow2 image: header, refcount table and blocks, zeroed L1."""
    if cluster_size < 512 or cluster_size > (2 << 20) or cluster_size & (cluster_size - 1):
        raise BlockOptionError(
            f"cluster_size {cluster_size} must be a power of two between 512 and 2M")
    if refcount_bits not in (1, 2, 4, 8, 16, 32, 64):
        raise BlockOptionError(f"refcount_bits {refcount_bits} must be a power of two up to 64")
    if version == 2 and (refcount_bits != 16 or lazy_refcounts):
        raise BlockOptionError("compat=0.10 needs refcount_bits=16 and no lazy_refcounts")
    if size < 0 or size % 512:
        raise BlockOptionError(f"image size {size} must be a non-negative multiple of 512")
    if backing_file and len(backing_file.encode()) > MAX_BACKING_NAME:
        raise BlockOptionError(f"backing file name is longer than {MAX_BACKING_NAME} bytes")
    cluster_bits = cluster_size.bit_length() - 1
    l2_coverage = cluster_size * (cluster_size // 8)
    l1_size = -(-size // l2_coverage)
    if l1_size * 8 > MAX_L1_BYTES:
        raise BlockOptionError(f"image size {size} is too large for cluster_size {cluster_size}")
    order = refcount_bits.bit_length() - 1
    per_block = cluster_size * 8 // refcount_bits
    l1_clusters = -(-l1_size * 8 // cluster_size)
    table_clusters, blocks = 1, 1
    while True:
        total = 1 + table_clusters + blocks + l1_clusters
        need_blocks = -(-total // per_block)
        need_table = -(-need_blocks * 8 // cluster_size)
        if (need_blocks, need_table) == (blocks, table_clusters):
            break
        blocks, table_clusters = need_blocks, need_table

    h = Qcow2Header()
    h.version = version
    h.header_length = V3_HEADER_LENGTH if version == 3 else V2_HEADER_LENGTH
    h.cluster_bits = cluster_bits
    h.size = size
    h.l1_size = l1_size
    h.refcount_table_offset = cluster_size
    h.refcount_table_clusters = table_clusters
    h.l1_table_offset = (1 + table_clusters + blocks) * cluster_size
    h.refcount_order = order
    if lazy_refcounts:
        h.compatible_features |= COMPAT_LAZY_REFCOUNTS
    h.backing_file = backing_file or None
    h.backing_format = backing_format if backing_file else None
    header = h.serialize()

    table = [(1 + table_clusters + i) * cluster_size for i in range(blocks)]
    table += [0] * (table_clusters * cluster_size // 8 - blocks)
    refcounts = [1] * total + [0] * (blocks * per_block - total)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise BlockError(f"could not create '{path}': {err.strerror}") from err
    try:
        fileio.pwrite_all(fd, header, 0)
        fileio.pwrite_all(fd, struct.pack(">%dQ" % len(table), *table), cluster_size)
        for i in range(blocks):
            chunk = refcounts[i * per_block:(i + 1) * per_block]
            fileio.pwrite_all(fd, encode_block(chunk, order),
                              (1 + table_clusters + i) * cluster_size)
        os.ftruncate(fd, total * cluster_size)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def create_raw(path: str, size: int) -> None:
    if size < 0:
        raise BlockOptionError(f"image size {size} is negative")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise BlockError(f"could not create '{path}': {err.strerror}") from err
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)

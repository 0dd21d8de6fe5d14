"""qcow2 refcounts: the two-level table that says how often each host cluster is used.

Refcount blocks are cached whole (a 64 KiB block describes 2 GiB of 64 KiB clusters) and
written back by :meth:`Refcounts.write_dirty`. A refcount increment may reach the disk
before the metadata that uses the cluster (a crash then leaks it); a decrement only after
(callers queue frees until the references are gone on disk). Growing the refcount table
writes the new blocks, then the new table, then the header, with a flush between each.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Dict, List, Set

from .. import fileio
from ..errors import ImageCorruptError, ImageFormatError

OFFSET_MASK = 0xFFFFFFFFFFFFFE00


def decode_block(data: bytes, order: int) -> List[int]:
    count = len(data) * 8 >> order
    if order == 3:
        return list(data)
    if order >= 4:
        return list(struct.unpack(">%d%s" % (count, "HIQ"[order - 4]), data))
    bits = 1 << order
    mask = (1 << bits) - 1
    return [(data[i * bits >> 3] >> (i * bits & 7)) & mask for i in range(count)]


def encode_block(entries: List[int], order: int) -> bytes:
    if order == 3:
        return bytes(entries)
    if order >= 4:
        return struct.pack(">%d%s" % (len(entries), "HIQ"[order - 4]), *entries)
    bits = 1 << order
    out = bytearray(len(entries) * bits >> 3)
    for i, value in enumerate(entries):
        out[i * bits >> 3] |= value << (i * bits & 7)
    return bytes(out)


class Refcounts:
    """Refcount table and blocks of one open image, with cluster allocation."""

    def __init__(self, fd: int, path: str, cluster_bits: int, order: int, table_offset: int,
                 table_clusters: int, file_size: int,
                 on_table_moved: Callable[[int, int], None]) -> None:
        self.fd = fd
        self.path = path
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.order = order
        self.max_refcount = (1 << (1 << order)) - 1
        self.block_shift = cluster_bits + 3 - order  # log2(entries per block)
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        raw = os.pread(fd, table_clusters << cluster_bits, table_offset)
        self.table: List[int] = [e & OFFSET_MASK for e in
                                 struct.unpack(">%dQ" % (len(raw) // 8), raw)]
        self.blocks: Dict[int, List[int]] = {}
        self.dirty_blocks: Set[int] = set()
        self.table_dirty = False
        self.free_hint = 0
        self.file_size = file_size
        self._on_table_moved = on_table_moved

    # ----- lookup -----
    def _block(self, index: int) -> List[int]:
        block = self.blocks.get(index)
        if block is None:
            offset = self.table[index]
            if offset % self.cluster_size or offset + self.cluster_size > max(
                    self.file_size, os.fstat(self.fd).st_size):
                raise ImageCorruptError(
                    f"{self.path}: refcount block {index} at offset {offset:#x} is unaligned or "
                    "beyond the end of the file")
            data = os.pread(self.fd, self.cluster_size, offset)
            block = decode_block(data.ljust(self.cluster_size, b"\0"), self.order)
            self.blocks[index] = block
        return block

    def get(self, cluster: int) -> int:
        index = cluster >> self.block_shift
        if index >= len(self.table) or not self.table[index]:
            return 0
        return self._block(index)[cluster & ((1 << self.block_shift) - 1)]

    def covered_clusters(self) -> int:
        """Clusters the current table can describe."""
        return len(self.table) << self.block_shift

    # ----- updates -----
    def set(self, cluster: int, value: int) -> None:
        if not 0 <= value <= self.max_refcount:
            raise ImageFormatError(
                f"{self.path}: refcount of cluster {cluster} would become {value}, outside "
                f"0..{self.max_refcount}")
        index = cluster >> self.block_shift
        block = self._writable_block(index)
        block[cluster & ((1 << self.block_shift) - 1)] = value
        self.dirty_blocks.add(index)
        if value == 0 and cluster < self.free_hint:
            self.free_hint = cluster

    def add(self, cluster: int, delta: int) -> None:
        old = self.get(cluster)
        if old + delta < 0:
            raise ImageCorruptError(
                f"{self.path}: refcount of cluster {cluster} (offset "
                f"{cluster << self.cluster_bits:#x}) would drop below zero")
        self.set(cluster, old + delta)

    def find_free(self, count: int) -> int:
        """First run of ``count`` free clusters at or after the allocation hint."""
        start = max(self.free_hint, 1)
        pos = start
        while pos < start + count:
            if self.get(pos):
                start = pos + 1
            pos += 1
        return start

    def alloc(self, count: int) -> int:
        """Allocate ``count`` contiguous clusters; returns the host byte offset."""
        start = self.find_free(count)
        self.free_hint = start + count
        for cluster in range(start, start + count):
            self.set(cluster, 1)
        return start << self.cluster_bits

    def free(self, offset: int, count: int) -> None:
        first = offset >> self.cluster_bits
        for cluster in range(first, first + count):
            self.add(cluster, -1)

    def _writable_block(self, index: int) -> List[int]:
        if index >= len(self.table):
            self._grow_table(index + 1)
        if self.table[index]:
            return self._block(index)
        per_block = 1 << self.block_shift
        block = [0] * per_block
        where = self.find_free(1)
        self.free_hint = where + 1
        self.blocks[index] = block
        self.dirty_blocks.add(index)
        if where >> self.block_shift == index:
            block[where & (per_block - 1)] = 1  # a block that describes itself
        else:
            self.set(where, 1)
        self.table[index] = where << self.cluster_bits
        self.table_dirty = True
        return block

    def _grow_table(self, min_entries: int) -> None:
        cs = self.cluster_size
        entries = max(min_entries, len(self.table) * 2)
        while True:
            clusters = -(-entries * 8 // cs)
            where = self.find_free(clusters)
            # room for the table's own clusters and the blocks describing them
            needed = ((where + clusters) >> self.block_shift) + 2
            if needed <= clusters * cs // 8:
                break
            entries = max(entries * 2, needed)
        old_offset, old_clusters = self.table_offset, self.table_clusters
        self.table = self.table + [0] * (clusters * cs // 8 - len(self.table))
        self.table_offset, self.table_clusters = where << self.cluster_bits, clusters
        self.free_hint = where + clusters
        for cluster in range(where, where + clusters):
            self.set(cluster, 1)
        self.write_dirty()
        os.fdatasync(self.fd)
        self._on_table_moved(self.table_offset, self.table_clusters)
        os.fdatasync(self.fd)
        self.free(old_offset, old_clusters)

    # ----- write-back -----
    def write_dirty(self) -> bool:
        """Write dirty blocks, then (after a flush) the table. True if anything was written."""
        wrote = bool(self.dirty_blocks)
        for index in sorted(self.dirty_blocks):
            data = encode_block(self.blocks[index], self.order)
            fileio.pwrite_all(self.fd, data, self.table[index])
        self.dirty_blocks.clear()
        if self.table_dirty:
            if wrote:
                os.fdatasync(self.fd)
            data = struct.pack(">%dQ" % len(self.table), *self.table)
            fileio.pwrite_all(self.fd, data, self.table_offset)
            self.table_dirty = False
            wrote = True
        return wrote

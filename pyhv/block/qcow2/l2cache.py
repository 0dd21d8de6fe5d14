"""An LRU cache of qcow2 L2 tables with write-back.

Dirty tables stay in memory until the image writes its metadata back; evicting a dirty
table first asks the image to write everything back in dependency order (refcounts, flush,
L2 tables, L1), because an L2 entry must never reach the disk before the refcount of the
cluster it points to.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from typing import Callable, List, Set

from .. import fileio
from ..errors import ImageCorruptError


class L2Cache:
    def __init__(self, fd: int, path: str, cluster_size: int, capacity: int,
                 write_back_all: Callable[[], None]) -> None:
        self.fd = fd
        self.path = path
        self.cluster_size = cluster_size
        self.entries = cluster_size // 8
        self.capacity = max(capacity, 4)
        self.tables: "OrderedDict[int, List[int]]" = OrderedDict()
        self.dirty: Set[int] = set()
        self._write_back_all = write_back_all
        self._format = ">%dQ" % self.entries

    def get(self, offset: int) -> List[int]:
        table = self.tables.get(offset)
        if table is not None:
            self.tables.move_to_end(offset)
            return table
        if offset % self.cluster_size:
            raise ImageCorruptError(f"{self.path}: L2 table offset {offset:#x} is not aligned "
                                    "to a cluster")
        data = os.pread(self.fd, self.cluster_size, offset)
        if len(data) < self.cluster_size:
            raise ImageCorruptError(
                f"{self.path}: L2 table at offset {offset:#x} lies beyond the end of the file")
        table = list(struct.unpack(self._format, data))
        self._insert(offset, table)
        return table

    def insert_new(self, offset: int, table: List[int]) -> None:
        """Add a table that exists only in memory so far; it is dirty."""
        self._insert(offset, table)
        self.dirty.add(offset)

    def mark_dirty(self, offset: int) -> None:
        self.dirty.add(offset)

    def _insert(self, offset: int, table: List[int]) -> None:
        while len(self.tables) >= self.capacity:
            victim = next(iter(self.tables))
            if victim in self.dirty:
                self._write_back_all()
            self.tables.pop(victim)
        self.tables[offset] = table

    def write_dirty(self) -> bool:
        wrote = bool(self.dirty)
        for offset in sorted(self.dirty):
            fileio.pwrite_all(self.fd, struct.pack(self._format, *self.tables[offset]), offset)
        self.dirty.clear()
        return wrote

    def drop_all(self) -> None:
        self.tables.clear()
        self.dirty.clear()

"""The qcow2 internal snapshot table (read-only: listed by ``info``, walked by ``check``)."""

from __future__ import annotations

import os
import struct
from typing import List, NamedTuple

from ..errors import ImageFormatError

_ENTRY = struct.Struct(">QIHHIIQII")  # 40 bytes before the extra data
MAX_SNAPSHOT_TABLE = 64 << 20


class Snapshot(NamedTuple):
    id: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    disk_size: int
    icount: int


def read_snapshots(fd: int, path: str, offset: int, count: int, cluster_size: int,
                   image_size: int) -> List[Snapshot]:
    """Parse ``count`` snapshot entries at ``offset``; each L1 table is bounds-checked."""
    if not count:
        return []
    file_size = os.fstat(fd).st_size
    data = os.pread(fd, min(MAX_SNAPSHOT_TABLE, max(0, file_size - offset)), offset)
    snapshots = []
    pos = 0
    for number in range(count):
        if pos + _ENTRY.size > len(data):
            raise ImageFormatError(f"{path}: snapshot table entry {number} at offset "
                                   f"{offset + pos:#x} is truncated")
        (l1_offset, l1_size, id_size, name_size, date_sec, date_nsec, vm_clock, vm_state,
         extra_size) = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        extra = data[pos:pos + extra_size]
        pos += extra_size
        disk_size = image_size
        icount = -1
        if len(extra) >= 8:
            vm_state = struct.unpack_from(">Q", extra)[0] or vm_state
        if len(extra) >= 16:
            disk_size = struct.unpack_from(">Q", extra, 8)[0]
        if len(extra) >= 24:
            icount = struct.unpack_from(">q", extra, 16)[0]
        if pos + id_size + name_size > len(data):
            raise ImageFormatError(f"{path}: snapshot table entry {number} is truncated")
        snap_id = data[pos:pos + id_size].decode("utf-8", "replace")
        pos += id_size
        name = data[pos:pos + name_size].decode("utf-8", "replace")
        pos += name_size
        pos = (pos + 7) & ~7
        if l1_offset % cluster_size or l1_offset + l1_size * 8 > file_size:
            raise ImageFormatError(
                f"{path}: L1 table of snapshot '{name}' at offset {l1_offset:#x} is unaligned "
                "or beyond the end of the file")
        snapshots.append(Snapshot(snap_id, name, l1_offset, l1_size, date_sec, date_nsec,
                                  vm_clock, vm_state, disk_size, icount))
    return snapshots


def snapshot_table_length(fd: int, offset: int, count: int) -> int:
    """Bytes the snapshot table occupies (for refcount checks)."""
    pos = 0
    for _ in range(count):
        head = os.pread(fd, _ENTRY.size, offset + pos)
        if len(head) < _ENTRY.size:
            break
        _, _, id_size, name_size, _, _, _, _, extra_size = _ENTRY.unpack(head)
        pos = (pos + _ENTRY.size + extra_size + id_size + name_size + 7) & ~7
    return pos

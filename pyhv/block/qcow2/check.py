"""Consistency check and repair of qcow2 refcounts (``pyhv img check``).

Every reference to a host cluster (header, L1 and L2 tables of the image and of each
snapshot, data and compressed clusters, refcount table and blocks, snapshot table) is
counted and compared with the stored refcount: a stored count too high is a leak (wasted
space, harmless); too low is a corruption (the cluster could be handed out twice). The
COPIED flag must be set exactly where the refcount is one.
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from ..errors import ImageCorruptError
from . import entries as E
from .snapshot import snapshot_table_length

if TYPE_CHECKING:
    from .image import Qcow2Image


class CheckResult:
    def __init__(self) -> None:
        self.corruptions = 0
        self.leaks = 0
        self.check_errors = 0
        self.corruptions_fixed = 0
        self.leaks_fixed = 0
        self.messages: List[str] = []
        self.image_end_offset = 0
        self.total_clusters = 0
        self.allocated_clusters = 0
        self.fragmented_clusters = 0
        self.compressed_clusters = 0


class _Walker:
    def __init__(self, image: "Qcow2Image", result: CheckResult) -> None:
        self.image = image
        self.result = result
        self.cs = image.cluster_size
        self.cb = image.cluster_bits
        self.file_clusters = -(-os.fstat(image.fd).st_size // self.cs)
        self.expected: Dict[int, int] = defaultdict(int)
        # (kind, location, entry, l1 index, l2 index) of active entries for the COPIED check
        self.flagged: List[Tuple[str, int, int, int]] = []

    def corrupt(self, message: str) -> None:
        self.result.corruptions += 1
        self.result.messages.append("ERROR " + message)

    def ref(self, offset: int, length: int, what: str) -> None:
        first = offset >> self.cb
        last = (offset + max(length, 1) - 1) >> self.cb
        for cluster in range(first, last + 1):
            if cluster >= self.file_clusters:
                self.corrupt(f"{what} at offset {offset:#x} is beyond the end of the file")
                return
            self.expected[cluster] += 1

    def walk_l1(self, l1: List[int], active: bool) -> None:
        image, cs = self.image, self.cs
        last_host = -1
        for l1_index, l1_entry in enumerate(l1):
            table_offset = l1_entry & E.OFFSET_MASK
            if not table_offset:
                continue
            if table_offset % cs:
                self.corrupt(f"L1 entry {l1_index}: L2 table offset {table_offset:#x} unaligned")
                continue
            if (table_offset >> self.cb) >= self.file_clusters:
                self.corrupt(f"L1 entry {l1_index}: L2 table at {table_offset:#x} beyond the "
                             "end of the file")
                continue
            self.ref(table_offset, cs, f"L2 table {l1_index}")
            if active:
                self.flagged.append(("L1", l1_index, -1, l1_entry))
            table = image.l2cache.get(table_offset)
            for l2_index, entry in enumerate(table):
                kind = E.classify(entry, image.version)
                if kind == E.COMPRESSED_CLUSTER:
                    host, length = E.compressed_location(entry, self.cb)
                    self.ref(host, length, "compressed cluster")
                    if active:
                        self.result.allocated_clusters += 1
                        self.result.compressed_clusters += 1
                        if entry & E.COPIED:
                            self.corrupt(f"compressed cluster {l1_index}/{l2_index} has "
                                         "OFLAG_COPIED set")
                    continue
                host = entry & E.OFFSET_MASK
                if not host:
                    continue
                if host % cs:
                    self.corrupt(f"L2 entry {l1_index}/{l2_index}: offset {host:#x} unaligned")
                    continue
                self.ref(host, cs, f"data cluster {l1_index}/{l2_index}")
                if active:
                    self.flagged.append(("L2", l1_index, l2_index, entry))
                    if kind == E.NORMAL:
                        self.result.allocated_clusters += 1
                        if last_host >= 0 and host != last_host + cs:
                            self.result.fragmented_clusters += 1
                        last_host = host


def check_image(image: "Qcow2Image", repair: Optional[str] = None) -> CheckResult:
    """Check ``image``; ``repair`` is None, "leaks" or "all" (also fixes corruptions)."""
    result = _check_once(image, repair)
    if repair and (result.leaks_fixed or result.corruptions_fixed):
        image._write_metadata()
        image.refcounts.write_dirty()
        os.fdatasync(image.fd)
        again = _check_once(image, None)
        again.leaks_fixed, again.corruptions_fixed = result.leaks_fixed, result.corruptions_fixed
        again.messages = result.messages + again.messages
        return again
    return result


def _check_once(image: "Qcow2Image", repair: Optional[str]) -> CheckResult:
    if not image.read_only:
        image._write_metadata()
    result = CheckResult()
    h = image.header
    walker = _Walker(image, result)
    cs = walker.cs
    result.total_clusters = -(-h.size // cs)
    walker.ref(0, cs, "header")
    if h.l1_size:
        walker.ref(h.l1_table_offset, h.l1_size * 8, "L1 table")
    walker.walk_l1(image.l1, True)
    for snap in image.snapshots:
        if snap.l1_size:
            walker.ref(snap.l1_table_offset, snap.l1_size * 8, f"L1 table of snapshot {snap.id}")
            raw = os.pread(image.fd, snap.l1_size * 8, snap.l1_table_offset)
            walker.walk_l1(list(struct.unpack(">%dQ" % (len(raw) // 8), raw)), False)
    if h.nb_snapshots:
        walker.ref(h.snapshots_offset, snapshot_table_length(image.fd, h.snapshots_offset,
                                                              h.nb_snapshots), "snapshot table")
    refcounts = image.refcounts
    walker.ref(refcounts.table_offset, refcounts.table_clusters * cs, "refcount table")
    for index, block in enumerate(refcounts.table):
        if not block:
            continue
        if block % cs or (block >> walker.cb) >= walker.file_clusters:
            walker.corrupt(f"refcount block {index} at {block:#x} is unaligned or outside "
                           "the image")
            result.check_errors += 1
            continue
        walker.ref(block, cs, f"refcount block {index}")
    _compare(image, walker, repair)
    _check_copied(image, walker, repair)
    return result


def _compare(image: "Qcow2Image", walker: _Walker, repair: Optional[str]) -> None:
    result, refcounts = walker.result, image.refcounts
    limit = max([walker.file_clusters] + [c + 1 for c in walker.expected])
    limit = max(limit, min(refcounts.covered_clusters(), walker.file_clusters))
    refcounts.free_hint = max(limit, refcounts.free_hint)  # repairs must not allocate there
    fixes: List[Tuple[int, int]] = []
    for cluster in range(limit):
        try:
            stored = refcounts.get(cluster)
        except ImageCorruptError as err:
            result.check_errors += 1
            result.messages.append(f"ERROR {err}")
            continue
        wanted = walker.expected.get(cluster, 0)
        if stored or wanted:
            result.image_end_offset = (cluster + 1) * walker.cs
        if stored == wanted:
            continue
        if stored > wanted:
            result.leaks += 1
            result.messages.append(f"Leaked cluster {cluster} refcount={stored} reference={wanted}")
            if repair in ("leaks", "all"):
                fixes.append((cluster, wanted))
                result.leaks_fixed += 1
        else:
            result.corruptions += 1
            result.messages.append(f"ERROR cluster {cluster} refcount={stored} reference={wanted}")
            if repair == "all":
                fixes.append((cluster, wanted))
                result.corruptions_fixed += 1
    for cluster, wanted in fixes:
        refcounts.set(cluster, wanted)


def _check_copied(image: "Qcow2Image", walker: _Walker, repair: Optional[str]) -> None:
    result = walker.result
    for level, l1_index, l2_index, entry in walker.flagged:
        target = entry & E.OFFSET_MASK
        refcount = image.refcounts.get(target >> walker.cb)
        want_copied = refcount == 1
        if bool(entry & E.COPIED) == want_copied:
            continue
        result.corruptions += 1
        result.messages.append(f"ERROR OFLAG_COPIED {level} entry {l1_index}/{l2_index}: "
                               f"refcount={refcount}")
        if repair != "all":
            continue
        fixed = entry | E.COPIED if want_copied else entry & ~E.COPIED
        if level == "L1":
            image.l1[l1_index] = fixed
            image.l1_dirty = True
        else:
            table_offset = image.l1[l1_index] & E.OFFSET_MASK
            image.l2cache.get(table_offset)[l2_index] = fixed
            image.l2cache.mark_dirty(table_offset)
        result.corruptions_fixed += 1

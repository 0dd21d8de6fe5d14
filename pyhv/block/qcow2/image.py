"""A qcow2 image as a block backend: cluster mapping, reads, allocating writes.

Write ordering (qcow2's consistency argument): a newly allocated cluster gets its data and
its refcount first; the L2 entry pointing at it reaches the disk only after a flush; the L1
entry after the L2 table it points to; a cluster dropped from the mapping has its refcount
decremented only after the mapping change is on disk. A crash at any point thus leaves at
most leaked clusters. Metadata is written back on flush, close and cache eviction.
"""

from __future__ import annotations

import os
import struct
from typing import List, Optional, Tuple

from .. import fileio
from ..backend import BlockBackend, Extent, open_image
from ..errors import BlockError, BlockOptionError, BlockRequestError, ImageCorruptError
from . import entries as E
from .header import (AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS,
                     INCOMPAT_DIRTY, Qcow2Header)
from .l2cache import L2Cache
from .refcount import Refcounts
from .snapshot import read_snapshots

L2_CACHE_BYTES = 4 << 20
_HEADER_READ = 1 << 21  # the largest cluster: the header and its extensions fit in it


class Qcow2Image(BlockBackend):
    format_name = "qcow2"

    def __init__(self, path: str, read_only: bool = False, chain: Tuple[str, ...] = ()) -> None:
        try:
            self._fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as err:
            raise BlockError(f"could not open '{path}': {err.strerror}") from err
        self.backing: Optional[BlockBackend] = None
        try:
            self._open(path, read_only, chain or (os.path.realpath(path),))
        except BaseException:
            self._release()
            raise

    def _open(self, path: str, read_only: bool, chain: Tuple[str, ...]) -> None:
        file_size = os.fstat(self._fd).st_size
        h = Qcow2Header.parse(os.pread(self._fd, _HEADER_READ, 0), file_size, path)
        h.check_features(path, read_only)
        super().__init__(path, h.size, read_only)
        self.header = h
        self.version = h.version
        self.cluster_bits = h.cluster_bits
        self.cluster_size = h.cluster_size
        self.l2_bits = h.cluster_bits - 3
        raw = os.pread(self._fd, h.l1_size * 8, h.l1_table_offset) if h.l1_size else b""
        self.l1: List[int] = list(struct.unpack(">%dQ" % h.l1_size, raw))
        self.l1_dirty = False
        self.refcounts = Refcounts(self._fd, path, h.cluster_bits, h.refcount_order,
                                   h.refcount_table_offset, h.refcount_table_clusters,
                                   file_size, self._refcount_table_moved)
        self.l2cache = L2Cache(self._fd, path, self.cluster_size,
                               L2_CACHE_BYTES // self.cluster_size, self._write_metadata)
        self.snapshots = read_snapshots(self._fd, path, h.snapshots_offset, h.nb_snapshots,
                                        self.cluster_size, h.size)
        self._pending_frees: List[Tuple[int, int]] = []
        self._zero_cluster = bytes(self.cluster_size)
        self._inflated: Tuple[int, bytes] = (-1, b"")
        self._compress_cursor = 0  # end of the last compressed stream, in a shared cluster
        self.backing_filename_full: Optional[str] = None
        if h.backing_file:
            self._open_backing(h, chain)
        if not read_only:
            self._prepare_for_writes()

    def _open_backing(self, h: Qcow2Header, chain: Tuple[str, ...]) -> None:
        name = h.backing_file
        if name.startswith("json:") or ":" in name.split("/")[0] and "://" in name:
            raise ImageCorruptError(f"{self.filename}: backing file '{name}' is not a local path")
        full = name if os.path.isabs(name) else os.path.join(
            os.path.dirname(self.filename), name)
        self.backing_filename_full = full
        fmt = h.backing_format or None
        try:
            self.backing = open_image(full, fmt, read_only=True, _chain=chain)
        except BlockOptionError as err:
            raise BlockError(f"{self.filename}: backing file '{full}': {err}") from err

    def _prepare_for_writes(self) -> None:
        h = self.header
        if h.incompatible_features & INCOMPAT_DIRTY:
            from .check import check_image
            check_image(self, repair="all")
            h.incompatible_features &= ~INCOMPAT_DIRTY
            self._write_header()
        # autoclear bits we do not maintain become invalid as soon as we write
        known = AUTOCLEAR_DATA_FILE_RAW if h.data_file else 0
        if h.autoclear_features & ~known:
            h.autoclear_features &= known
            self._write_header()

    # ----- header -----
    def _write_header(self) -> None:
        fileio.pwrite_all(self._fd, self.header.serialize(), 0)

    def _refcount_table_moved(self, offset: int, clusters: int) -> None:
        self.header.refcount_table_offset = offset
        self.header.refcount_table_clusters = clusters
        self._write_header()

    def set_backing(self, name: Optional[str], fmt: Optional[str]) -> None:
        """Rewrite the backing file name and format in the header (rebase, commit)."""
        self.header.backing_file = name or None
        self.header.backing_format = fmt if name else None
        self._write_header()
        os.fdatasync(self._fd)

    # ----- mapping -----
    def l2_entry(self, guest_cluster: int) -> int:
        l1_index = guest_cluster >> self.l2_bits
        if l1_index >= len(self.l1):
            return 0
        table_offset = self.l1[l1_index] & E.OFFSET_MASK
        if not table_offset:
            return 0
        return self.l2cache.get(table_offset)[guest_cluster & ((1 << self.l2_bits) - 1)]

    def _writable_l2(self, guest_cluster: int) -> List[int]:
        """The L2 table for ``guest_cluster``, allocated or copied so it may be changed."""
        l1_index = guest_cluster >> self.l2_bits
        l1_entry = self.l1[l1_index]
        old = l1_entry & E.OFFSET_MASK
        if old and l1_entry & E.COPIED:
            table = self.l2cache.get(old)
            return table
        table = list(self.l2cache.get(old)) if old else [0] * (1 << self.l2_bits)
        new = self.refcounts.alloc(1)
        self.l2cache.insert_new(new, table)
        self.l1[l1_index] = new | E.COPIED
        self.l1_dirty = True
        if old:
            self._pending_frees.append((old, 1))
        return table

    def _host_range(self, entry: int, where: int) -> int:
        host = entry & E.OFFSET_MASK
        if host & (self.cluster_size - 1):
            raise ImageCorruptError(f"{self.filename}: L2 entry for guest offset {where:#x} "
                                    f"points to unaligned host offset {host:#x}")
        return host

    # ----- reads -----
    def readinto(self, offset: int, buf: memoryview) -> None:
        self._check_request(offset, len(buf), False)
        self._read_guest(offset, fileio.byte_view(buf))

    def _read_guest(self, offset: int, buf: memoryview) -> None:
        cs, cb = self.cluster_size, self.cluster_bits
        pos, total = 0, len(buf)
        while pos < total:
            where = offset + pos
            cluster = where >> cb
            within = where & (cs - 1)
            entry = self.l2_entry(cluster)
            kind = E.classify(entry, self.version)
            run = min(cs - within, total - pos)
            if kind == E.NORMAL:
                host = self._host_range(entry, where) + within
                # extend over clusters that follow contiguously on the host
                while pos + run < total:
                    nxt = self.l2_entry(cluster + 1)
                    if (E.classify(nxt, self.version) != E.NORMAL
                            or nxt & E.OFFSET_MASK != (entry & E.OFFSET_MASK) + cs):
                        break
                    cluster, entry = cluster + 1, nxt
                    run += min(cs, total - pos - run)
                fileio.pread_into(self._fd, buf[pos:pos + run], host)
            elif kind == E.UNALLOCATED:
                while pos + run < total and not self.l2_entry(cluster + 1):
                    cluster += 1
                    run += min(cs, total - pos - run)
                self._read_backing(where, buf[pos:pos + run])
            elif kind == E.ZERO_CLUSTER:
                buf[pos:pos + run] = self._zero_cluster[:run]
            else:
                buf[pos:pos + run] = self._inflate(entry, where)[within:within + run]
            pos += run

    def _read_backing(self, offset: int, buf: memoryview) -> None:
        available = 0
        if self.backing is not None:
            available = max(0, min(len(buf), self.backing.size - offset))
            if available:
                self.backing.readinto(offset, buf[:available])
        if available < len(buf):
            rest = len(buf) - available
            buf[available:] = self._zero_cluster[:rest] if rest <= self.cluster_size \
                else bytes(rest)

    def _inflate(self, entry: int, where: int) -> bytes:
        if self._inflated[0] == entry:
            return self._inflated[1]
        host, length = E.compressed_location(entry, self.cluster_bits)
        data = os.pread(self._fd, length, host)
        out = E.inflate_cluster(data, self.cluster_size,
                                f"{self.filename}: guest offset {where:#x}")
        self._inflated = (entry, out)
        return out

    # ----- writes -----
    def write(self, offset: int, data) -> None:
        view = fileio.byte_view(data)
        self._check_request(offset, len(view), True)
        self._mark_dirty_if_lazy()
        cs, cb = self.cluster_size, self.cluster_bits
        pos, total = 0, len(view)
        while pos < total:
            where = offset + pos
            cluster = where >> cb
            within = where & (cs - 1)
            run = min(cs - within, total - pos)
            entry = self.l2_entry(cluster)
            if E.classify(entry, self.version) == E.NORMAL and entry & E.COPIED:
                host = self._host_range(entry, where) + within
                while pos + run < total:
                    nxt = self.l2_entry(cluster + 1)
                    if (E.classify(nxt, self.version) != E.NORMAL or not nxt & E.COPIED
                            or nxt & E.OFFSET_MASK != (entry & E.OFFSET_MASK) + cs):
                        break
                    cluster, entry = cluster + 1, nxt
                    run += min(cs, total - pos - run)
                fileio.pwrite_all(self._fd, view[pos:pos + run], host)
            else:
                run = self._allocating_write(where, view[pos:])
            pos += run

    def _needs_allocation(self, cluster: int) -> bool:
        entry = self.l2_entry(cluster)
        return not (E.classify(entry, self.version) == E.NORMAL and entry & E.COPIED)

    def _allocating_write(self, where: int, view: memoryview) -> int:
        """Write into fresh clusters from ``where``; returns the bytes consumed."""
        cs, cb = self.cluster_size, self.cluster_bits
        first = where >> cb
        within = where & (cs - 1)
        per_table = 1 << self.l2_bits
        last_in_table = (first | (per_table - 1))
        last_needed = (where + len(view) - 1) >> cb
        count = 1
        while (first + count <= min(last_in_table, last_needed)
               and self._needs_allocation(first + count)):
            count += 1
        length = min(len(view), count * cs - within)
        table = self._writable_l2(first)
        host = self.refcounts.alloc(count)
        if within == 0 and length == count * cs:
            fileio.pwrite_all(self._fd, view[:length], host)
        else:
            buf = bytearray(count * cs)
            mv = memoryview(buf)
            if within:
                self._read_guest(first << cb, mv[:within])
            tail = within + length
            if tail < count * cs:
                self._read_guest((first << cb) + tail, mv[tail:])
            mv[within:tail] = view[:length]
            fileio.pwrite_all(self._fd, buf, host)
        index = first & (per_table - 1)
        for i in range(count):
            self._drop_entry(table[index + i])
            table[index + i] = (host + i * cs) | E.COPIED
        self.l2cache.mark_dirty(self.l1[first >> self.l2_bits] & E.OFFSET_MASK)
        return length

    def write_compressed(self, offset: int, data) -> None:
        """Store one whole cluster deflated (``convert -c``); incompressible data is stored
        as a normal cluster. Streams are packed into shared clusters, never across one."""
        cs = self.cluster_size
        view = fileio.byte_view(data)
        self._check_request(offset, len(view), True)
        if offset % cs or (len(view) != cs and offset + len(view) != self.size):
            raise BlockRequestError(f"{self.filename}: compressed writes must cover one whole "
                                    f"cluster (offset {offset:#x}, {len(view)} bytes)")
        packed = E.deflate_cluster(bytes(view).ljust(cs, b"\0"))
        if len(packed) >= cs - 512:
            self.write(offset, view)
            return
        self._mark_dirty_if_lazy()
        cluster = offset >> self.cluster_bits
        table = self._writable_l2(cluster)
        cursor = self._compress_cursor
        if cursor and (cursor % cs) + len(packed) <= cs and cursor % cs:
            self.refcounts.add(cursor >> self.cluster_bits, 1)
            host = cursor
        else:
            host = self.refcounts.alloc(1)
        fileio.pwrite_all(self._fd, packed, host)
        self._compress_cursor = host + len(packed)
        index = cluster & ((1 << self.l2_bits) - 1)
        self._drop_entry(table[index])
        table[index] = E.compressed_entry(host, len(packed), self.cluster_bits)
        self.l2cache.mark_dirty(self.l1[cluster >> self.l2_bits] & E.OFFSET_MASK)

    def _drop_entry(self, entry: int) -> None:
        """Queue the clusters an overwritten L2 entry used; freed after the L2 is on disk."""
        if entry & E.COMPRESSED:
            host, length = E.compressed_location(entry, self.cluster_bits)
            first = host >> self.cluster_bits
            last = (host + length - 1) >> self.cluster_bits
            self._pending_frees.append((first << self.cluster_bits, last - first + 1))
        elif entry & E.OFFSET_MASK:
            self._pending_frees.append((entry & E.OFFSET_MASK, 1))

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check_request(offset, length, True)
        self._unmap(offset, length, zero=True)

    def discard(self, offset: int, length: int) -> None:
        self._check_request(offset, length, True)
        self._unmap(offset, length, zero=False)

    def _unmap(self, offset: int, length: int, zero: bool, keep_backing: bool = False) -> None:
        """Drop whole clusters; partial ones get real zeros when ``zero`` is asked for."""
        cs = self.cluster_size
        end = offset + length
        first_full = -(-offset // cs)
        end_full = end // cs
        if end == self.size:
            end_full = -(-end // cs)  # the last, partial cluster counts as whole
        if zero:
            head_end = min(end, first_full * cs)
            if head_end > offset:
                self.write(offset, bytes(head_end - offset))
            if end_full * cs < end and end_full >= first_full:
                self.write(end_full * cs, bytes(end - end_full * cs))
        if end_full <= first_full:
            return
        self._mark_dirty_if_lazy()
        if zero and self.backing is not None and self.version < 3:
            self.write(first_full * cs, bytes((end_full - first_full) * cs))
            return
        use_zero_flag = self.version >= 3 and (zero or self.backing is not None) \
            and not keep_backing
        for cluster in range(first_full, end_full):
            entry = self.l2_entry(cluster)
            wanted = E.ZERO if use_zero_flag else 0
            if entry == wanted:
                continue
            table = self._writable_l2(cluster)
            index = cluster & ((1 << self.l2_bits) - 1)
            self._drop_entry(table[index])
            table[index] = wanted
            self.l2cache.mark_dirty(self.l1[cluster >> self.l2_bits] & E.OFFSET_MASK)

    def make_empty(self) -> None:
        """Unmap every cluster so all reads fall through to the backing file (commit)."""
        self._unmap(0, self.size, zero=False, keep_backing=True)

    def _mark_dirty_if_lazy(self) -> None:
        h = self.header
        if h.compatible_features & COMPAT_LAZY_REFCOUNTS and not (
                h.incompatible_features & INCOMPAT_DIRTY):
            h.incompatible_features |= INCOMPAT_DIRTY
            self._write_header()
            os.fdatasync(self._fd)

    # ----- metadata write-back -----
    def _write_metadata(self) -> None:
        self.refcounts.write_dirty()
        if self.l2cache.dirty or self.l1_dirty:
            os.fdatasync(self._fd)  # data and refcounts before the entries that use them
            if self.l2cache.write_dirty() and self.l1_dirty:
                os.fdatasync(self._fd)
            if self.l1_dirty:
                raw = struct.pack(">%dQ" % len(self.l1), *self.l1)
                fileio.pwrite_all(self._fd, raw, self.header.l1_table_offset)
                self.l1_dirty = False
        if self._pending_frees:
            os.fdatasync(self._fd)  # the references are gone on disk before the decrement
            frees, self._pending_frees = self._pending_frees, []
            self._compress_cursor = 0  # its cluster may be freed and handed out again
            for host, count in frees:
                self.refcounts.free(host, count)

    def flush(self) -> None:
        if self.read_only:
            return
        self._write_metadata()
        self.refcounts.write_dirty()
        os.fdatasync(self._fd)

    def truncate(self, new_size: int) -> None:
        from .resize import resize_image
        resize_image(self, new_size)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            if not self.read_only:
                self.flush()
                if self.header.incompatible_features & INCOMPAT_DIRTY:
                    self.header.incompatible_features &= ~INCOMPAT_DIRTY
                    self._write_header()
                    os.fdatasync(self._fd)
        finally:
            self._release()

    def _release(self) -> None:
        if self.backing is not None:
            self.backing.close()
            self.backing = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # ----- introspection -----
    def backing_chain(self) -> List[BlockBackend]:
        chain: List[BlockBackend] = [self]
        if self.backing is not None:
            chain += self.backing.backing_chain()
        return chain

    def block_status(self, offset: int, length: int) -> List[Extent]:
        from .mapping import qcow2_block_status
        self._check_request(offset, length, False)
        return qcow2_block_status(self, offset, length)

    @property
    def fd(self) -> int:
        return self._fd

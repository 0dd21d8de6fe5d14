"""virtio-blk (virtio 1.2, 5.2) over a :class:`pyhv.block.backend.BlockBackend`.

A request is a 16-byte header (type, ioprio, sector), data buffers, and a status byte in
the last writable byte. Requests run when the driver kicks, on the machine's I/O thread
(iothread.py) or, without one, on the notifying thread; data moves with the backend's
``readv``/``writev`` straight between the disk and memoryviews of guest RAM.

Given ``workers`` and a thread-safe backend (raw), long reads run on a :class:`WorkerPool`
in parallel and complete to the used ring in the order they finish, as virtio allows (2.7.8),
published in batches as the workers finish them. Writes and shorter requests, for which a
thread hand-off costs more than it overlaps, run in line, and are published to the used ring
in batches too (:func:`publish_batch`).
Requests run in line that continue one another on the disk (reads after reads, writes after
writes, each starting where the one before it ends) go to the backend as one vectored call,
as QEMU's virtio-blk merges them; each still completes with its own status.
A FLUSH (and every other non-data request) waits for the pool to drain first, so it completes
only after every write submitted before it; a reset waits the same way before the rings go.

Guest mistakes that break the protocol (no header, no status byte) put the device in
NEEDS_RESET; requests that are well-formed but wrong (past the end, a write to a read-only
disk, a length that is not whole sectors) complete with VIRTIO_BLK_S_IOERR, unknown ones
with VIRTIO_BLK_S_UNSUPP, as QEMU does.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import struct
import threading
from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Tuple

from ...block.backend import BlockBackend
from ...block.errors import BlockError
from ...memory import GuestMemory
from ...runtime_env import usable_cpus
from . import spec
from .device import VirtioDevice
from .iothread import WorkerPool
from .iovec import descriptor_views, gather, scatter, split_at, total_length
from .queue import DescriptorChain, VirtqueueError, namedtuple_maker

log = logging.getLogger("pyhv.virtio.blk")

# Feature bits (5.2.3).
F_SEG_MAX = 2
F_RO = 5
F_BLK_SIZE = 6
F_FLUSH = 9
F_DISCARD = 13
F_WRITE_ZEROES = 14

# Request types (5.2.6).
T_IN = 0
T_OUT = 1
T_FLUSH = 4
T_GET_ID = 8
T_DISCARD = 11
T_WRITE_ZEROES = 13

S_OK = 0
S_IOERR = 1
S_UNSUPP = 2

SECTOR_SIZE = 512
QUEUE_SIZE = 256
SEG_MAX = QUEUE_SIZE - 2  # a chain holds the header and status besides the data
ID_BYTES = 20
MAX_DISCARD_SECTORS = 0x3F_FFFF  # 2 GiB - 512 per segment, QEMU's request limit
MAX_DISCARD_SEGMENTS = 32
DISCARD_ALIGNMENT_SECTORS = 8  # 4 KiB: a hole can only be punched in whole host pages
WRITE_ZEROES_FLAG_UNMAP = 0x1
# Two worker threads for long reads where the process may use two CPUs or more, else none.
# Measured with bench/blk.py on PyPy on a 2-core Intel host (2026-11-27), 1 MiB reads with
# 8 in flight: 110-125% of the one-thread host with two workers against 82-86% in line, since
# a second copy in parallel pays there (the host's own two threads: 1.7-1.9x); pinned to one
# CPU the workers cost 10% (79-90% against 95-107% in line).
DEFAULT_WORKERS = 2 if usable_cpus() >= 2 else 0
# Below this, handing a request to a worker (a wake-up, a GIL hand-off) costs more than the
# copy it would overlap.
PARALLEL_MIN_BYTES = 256 * 1024

# The most requests completed in line on the queue's thread between two publications to the
# used ring (and the interrupt the driver asked for, if any).
PUBLISH_BATCH = 16


def publish_batch(available: int) -> int:
    """Requests to complete in line before publishing, for a pass that found ``available``.

    Half of them, so the driver refills the ring while the device moves the other half and
    the device never runs dry; at most PUBLISH_BATCH, so a deep ring of small requests does not
    hold back its completions. Measured with bench/blk.py on PyPy (1 MiB reads, 8 in flight):
    publishing after every 8 left the device idle while the driver refilled, 75-78% of the
    host; after every 4, 90-91%; 4 KiB requests, 64 in flight, keep batches of 16."""
    return max(1, min(PUBLISH_BATCH, available // 2))

# type, ioprio, sector. The sector is read signed (a "Q" field is a long integer on PyPy,
# and so is every offset computed from it); one of 2**63 and up is negative: out of range.
_HEADER = struct.Struct("<IIq")
_SEGMENT = struct.Struct("<QII")  # sector, num_sectors, flags
# struct virtio_blk_config up to write_zeroes_may_unmap and its padding (5.2.4): capacity,
# size_max, seg_max, geometry (c, h, s), blk_size, physical_block_exp, alignment_offset,
# min_io_size, opt_io_size, writeback, unused, num_queues, max_discard_sectors,
# max_discard_seg, discard_sector_alignment, max_write_zeroes_sectors, max_write_zeroes_seg,
# write_zeroes_may_unmap, 3 bytes of padding.
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")


class BlockRequest(NamedTuple):
    """One parsed request: the data views and the status byte point into guest RAM."""

    head: int
    request_type: int
    sector: int
    out_data: List[memoryview]  # to the device
    in_data: List[memoryview]  # from the device
    status: memoryview


new_request = namedtuple_maker(BlockRequest)


def _data_length(request: BlockRequest) -> int:
    """The bytes a read or write moves (0 for other requests)."""
    if request.request_type == T_IN:
        return total_length(request.in_data)
    if request.request_type == T_OUT:
        return total_length(request.out_data)
    return 0


def _adjacent(previous: BlockRequest, request: BlockRequest) -> bool:
    """Whether ``request`` reads (or writes) on from where ``previous``, of the same kind, ends."""
    kind = request.request_type
    if kind != previous.request_type or kind not in (T_IN, T_OUT):
        return False
    length = _data_length(previous)
    return length % SECTOR_SIZE == 0 and request.sector == previous.sector + length // SECTOR_SIZE


class VirtioBlock(VirtioDevice):
    """One disk; ``serial`` is what VIRTIO_BLK_T_GET_ID returns (20 bytes at most);
    ``discard=False`` (QEMU's discard=ignore) leaves DISCARD unoffered; ``workers`` threads
    serve long requests of a thread-safe backend (0: every request in line); ``packed``
    offers packed virtqueues."""

    device_id = spec.ID_BLOCK
    name = "virtio-blk"
    runs_on_iothread = True

    def __init__(self, memory: GuestMemory, backend: BlockBackend, serial: str = "",
                 discard: bool = True, workers: int = DEFAULT_WORKERS, packed: bool = False) -> None:
        features = spec.bit(F_SEG_MAX) | spec.bit(F_BLK_SIZE) | spec.bit(F_FLUSH)
        if backend.read_only:
            features |= spec.bit(F_RO)
        else:
            features |= spec.bit(F_WRITE_ZEROES) | (spec.bit(F_DISCARD) if discard else 0)
        super().__init__(memory, [QUEUE_SIZE], features, packed)
        self.backend = backend
        self.serial = serial.encode()[:ID_BYTES]
        self._pool: Optional[WorkerPool] = None
        if backend.thread_safe and workers > 0:
            self._pool = WorkerPool(f"{self.name}-worker", workers)
        # Completed requests wait here for _publish, which owns the used rings and their
        # interrupts while it holds _used_lock (the queue's thread and the workers share it).
        self._completed: Deque[Tuple[int, int, int]] = collections.deque()  # (queue, head, length)
        self._used_lock = threading.Lock()
        # Set by a thread that asked to publish while another held _used_lock, so the holder
        # publishes once more after letting go (see _publish).
        self._publish_asked = False
        # Requests in the workers' hands, and how many completions they publish at a time
        # (see _run_in_pool); _pool_lock makes "the last one out publishes" exact.
        self._in_pool = 0
        self._pool_batch = 1
        self._pool_lock = threading.Lock()
        self._handlers: Dict[int, Callable[[int, List[memoryview], List[memoryview]], Tuple[int, int]]] = {
            T_IN: self._read,
            T_OUT: self._write,
            T_FLUSH: self._flush,
            T_GET_ID: self._get_id,
            T_DISCARD: self._discard,
            T_WRITE_ZEROES: self._write_zeroes,
        }

    @property
    def capacity(self) -> int:
        """Disk size in 512-byte sectors (a partial last sector is not addressable)."""
        return self.backend.size // SECTOR_SIZE

    def config_space(self) -> bytes:
        return _CONFIG.pack(
            self.capacity, 0, SEG_MAX, 0, 0, 0, SECTOR_SIZE, 0, 0, 0, 0, 0, 0, 1,
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, DISCARD_ALIGNMENT_SECTORS,
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, 1)

    # --- the queue ------------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        queue = self.queues[index]
        pool = self._pool
        run: List[BlockRequest] = []  # requests for the backend in one call, see _adjacent
        unpublished = 0
        batch = publish_batch(queue.pending(self.memory, 2 * PUBLISH_BATCH))
        self._pool_batch = batch
        for chain in queue.iter_available(self.memory):
            request = self._parse(chain)
            if pool is not None:
                if self._runs_in_pool(request):
                    with self._pool_lock:
                        self._in_pool += 1
                    pool.submit(functools.partial(self._run_in_pool, index, request))
                    continue
                if request.request_type not in (T_IN, T_OUT):
                    self._run_in_line(index, run)
                    run = []
                    pool.drain()
                    self._publish(wait=True)
            if run and not _adjacent(run[-1], request):
                self._run_in_line(index, run)
                run = []
            run.append(request)
            # Requests run here are published in batches, as QEMU's dataplane notifies once
            # per batch: an interrupt per request would have the driver refill one at a time,
            # each refill a hand-off between its thread and this one. The batch is short
            # enough that the driver refills while the rest of the ring is processed.
            unpublished += 1
            if unpublished >= batch:
                self._run_in_line(index, run)
                run = []
                self._publish(wait=False)
                unpublished = 0
        self._run_in_line(index, run)
        if unpublished:
            self._publish(wait=False)

    def _run_in_line(self, index: int, run: List[BlockRequest]) -> None:
        """Run ``run`` (adjacent requests, see :func:`_adjacent`) and complete each request,
        unpublished: as one backend call where they all may, else one by one, so that a
        failure gets the status of the request it belongs to."""
        if len(run) > 1 and self._execute_merged(run):
            reading = run[0].request_type == T_IN  # the bytes the device wrote into guest RAM
            for request in run:
                request.status[0] = S_OK
                self._completed.append((index, request.head, (_data_length(request) if reading else 0) + 1))
            return
        for request in run:
            self._completed.append((index, request.head, self._execute(request)))

    def _execute_merged(self, run: List[BlockRequest]) -> bool:
        """``run`` as one request through _read or _write: False (nothing reported yet) when
        they refuse it or the backend fails. Adjacent requests, each of whole sectors but
        perhaps the last, lie in range exactly when the whole does."""
        if run[0].request_type == T_IN:
            views = [view for request in run for view in request.in_data]
            handler, out_data, in_data = self._read, [], views
        else:
            views = [view for request in run for view in request.out_data]
            handler, out_data, in_data = self._write, views, []
        try:
            status, _written = handler(run[0].sector, out_data, in_data)
        except (BlockError, OSError):
            return False  # run again one by one: reads and writes at fixed offsets repeat safely
        return status == S_OK

    @staticmethod
    def _runs_in_pool(request: BlockRequest) -> bool:
        # Only reads: Linux serializes buffered writes to one file on its inode lock, so a
        # second writer waits for the first and the hand-off is all it adds.
        return request.request_type == T_IN and total_length(request.in_data) >= PARALLEL_MIN_BYTES

    def _run_in_pool(self, index: int, request: BlockRequest) -> None:
        """A worker's job: run the request and complete it, whatever happens, so the guest
        never waits for a request that was lost."""
        try:
            length = self._execute(request)
        except Exception:
            log.exception("%s: request type %d at sector %d failed", self.backend.filename,
                          request.request_type, request.sector)
            request.status[0] = S_IOERR
            length = 1
        # Published in batches, as in line: the driver refills while the other workers copy.
        # The last request out of the pool always publishes, so none waits for a batch.
        self._completed.append((index, request.head, length))
        with self._pool_lock:
            self._in_pool -= 1
            publish = not self._in_pool or len(self._completed) >= self._pool_batch
        if publish:
            self._publish(wait=False)

    # --- completion ---------------------------------------------------------------------------
    def _publish(self, wait: bool) -> None:
        """Move completed requests to their used rings and interrupt if the driver asks.

        ``wait`` also waits for a publication in progress on another thread (a reset must
        not pull the rings from under it). Without it this never blocks: a thread that finds
        the lock held leaves ``_publish_asked`` set, and the holder publishes again after
        letting go, so no completion that asked is left behind. It does not look again for
        completions that did not ask: a worker's request in the middle of a batch waits for
        the batch. A thread blocked on a ``threading`` lock takes 160 µs to wake on PyPy 3.9,
        and the holder releases the GIL inside (the interrupt is a system call)."""
        lock = self._used_lock
        self._publish_asked = True
        if wait:
            with lock:
                self._publish_asked = False
                self._publish_locked()
        while self._publish_asked and lock.acquire(False):
            try:
                # Cleared before the completed queue is drained: an entry whose thread asked
                # after this line is either drained below or asks again after release.
                self._publish_asked = False
                self._publish_locked()
            finally:
                lock.release()

    def _publish_locked(self) -> None:
        completed = self._completed
        by_queue: Dict[int, List[Tuple[int, int]]] = {}
        while completed:
            index, head, length = completed.popleft()
            by_queue.setdefault(index, []).append((head, length))
        for index, entries in by_queue.items():
            queue = self.queues[index]
            try:
                queue.add_used_batch(self.memory, entries)  # one index update for the lot
            except VirtqueueError as err:
                self.fail(index, err)
            self.signal_used(queue)

    def _execute(self, request: BlockRequest) -> int:
        """Run one request and write its status; the bytes written into the guest's buffers."""
        handler = self._handlers.get(request.request_type)
        if handler is None:
            status, written = S_UNSUPP, 0
        else:
            try:
                status, written = handler(request.sector, request.out_data, request.in_data)
            except (BlockError, OSError) as err:
                log.warning("%s: request type %d at sector %d failed: %s",
                            self.backend.filename, request.request_type, request.sector, err)
                status, written = S_IOERR, 0
        request.status[0] = status
        return written + 1

    def _parse(self, chain: DescriptorChain) -> BlockRequest:
        descriptors = chain.descriptors
        first, last = descriptors[0], descriptors[-1]
        if (len(descriptors) >= 2 and not first.writable and first.length == _HEADER.size
                and last.writable and last.length == 1):
            # How every driver frames it (header, data..., status, each in its own
            # descriptor): no byte-level splitting, which costs more than the I/O for 4 KiB.
            memory = self.memory
            request_type, _ioprio, sector = _HEADER.unpack(memory.view(first.gpa, _HEADER.size))
            out_data: List[memoryview] = []
            in_data: List[memoryview] = []
            for d in descriptors[1:-1]:
                if d.length:
                    (in_data if d.writable else out_data).append(memory.view(d.gpa, d.length))
            return new_request((chain.head, request_type, sector, out_data, in_data, memory.view(last.gpa, 1)))
        header_views, out_data = split_at(descriptor_views(self.memory, chain.readable), _HEADER.size)
        writable = descriptor_views(self.memory, chain.writable)
        if total_length(header_views) < _HEADER.size:
            raise VirtqueueError(f"request {chain.head}: header shorter than {_HEADER.size} bytes")
        in_length = total_length(writable) - 1
        if in_length < 0:
            raise VirtqueueError(f"request {chain.head}: no writable byte for the status")
        in_data, status_views = split_at(writable, in_length)
        request_type, _ioprio, sector = _HEADER.unpack(gather(header_views))
        return new_request((chain.head, request_type, sector, out_data, in_data, status_views[0]))

    def _data_range(self, sector: int, length: int) -> bool:
        return length % SECTOR_SIZE == 0 and 0 <= sector and sector + length // SECTOR_SIZE <= self.capacity

    # --- request types (each returns (status, bytes written to in_data)) ---------------------
    def _read(self, sector: int, out_data: List[memoryview], in_data: List[memoryview]) -> Tuple[int, int]:
        length = total_length(in_data)
        if not self._data_range(sector, length):
            return S_IOERR, 0
        self.backend.readv(sector * SECTOR_SIZE, in_data)
        return S_OK, length

    def _write(self, sector: int, out_data: List[memoryview], in_data: List[memoryview]) -> Tuple[int, int]:
        if self.backend.read_only or not self._data_range(sector, total_length(out_data)):
            return S_IOERR, 0
        self.backend.writev(sector * SECTOR_SIZE, out_data)
        return S_OK, 0

    def _flush(self, sector: int, out_data: List[memoryview], in_data: List[memoryview]) -> Tuple[int, int]:
        self.backend.flush()
        return S_OK, 0

    def _get_id(self, sector: int, out_data: List[memoryview], in_data: List[memoryview]) -> Tuple[int, int]:
        return S_OK, scatter(in_data, self.serial.ljust(ID_BYTES, b"\0"))

    def _discard(self, sector: int, out_data: List[memoryview], in_data: List[memoryview]) -> Tuple[int, int]:
        if not self.avail_features >> F_DISCARD & 1:
            return S_UNSUPP, 0
        return self._segments(out_data, unmap_allowed=False, operation=self.backend.discard)

    def _write_zeroes(self, sector: int, out_data: List[memoryview],
                      in_data: List[memoryview]) -> Tuple[int, int]:
        return self._segments(out_data, unmap_allowed=True, operation=self.backend.write_zeroes)

    def _segments(self, out_data: List[memoryview], unmap_allowed: bool,
                  operation: Callable[[int, int], None]) -> Tuple[int, int]:
        payload = gather(out_data)
        count, remainder = divmod(len(payload), _SEGMENT.size)
        if self.backend.read_only:
            return S_IOERR, 0
        if remainder or not 0 < count <= MAX_DISCARD_SEGMENTS:
            return S_IOERR, 0
        segments = [_SEGMENT.unpack_from(payload, i * _SEGMENT.size) for i in range(count)]
        for sector, sectors, flags in segments:
            allowed = WRITE_ZEROES_FLAG_UNMAP if unmap_allowed else 0
            if flags & ~allowed:
                return S_UNSUPP, 0
            if sectors > MAX_DISCARD_SECTORS or sector + sectors > self.capacity:
                return S_IOERR, 0
        for sector, sectors, _flags in segments:
            operation(sector * SECTOR_SIZE, sectors * SECTOR_SIZE)
        return S_OK, 0

    # --- life cycle -------------------------------------------------------------------------
    def reset(self) -> None:
        """Wait for the requests in the workers' hands (they write the used ring) first."""
        with self.queue_lock:
            if self._pool is not None:
                self._pool.drain()
            self._publish(wait=True)
            super().reset()

    @property
    def requests_in_flight(self) -> int:
        """Requests handed to the workers and not yet completed."""
        return self._pool.in_flight if self._pool is not None else 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self.backend.close()

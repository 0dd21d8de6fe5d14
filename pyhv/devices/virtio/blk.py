"""virtio-blk (virtio 1.2, 5.2) over a :class:`pyhv.block.backend.BlockBackend`.

A request is a 16-byte header (type, ioprio, sector), data buffers, and a status byte in
the last writable byte. Requests run when the driver kicks, on the machine's I/O thread
(iothread.py) or, without one, on the notifying thread; data moves with the backend's
``readv``/``writev`` straight between the disk and memoryviews of guest RAM.

Guest mistakes that break the protocol (no header, no status byte) put the device in
NEEDS_RESET; requests that are well-formed but wrong (past the end, a write to a read-only
disk, a length that is not whole sectors) complete with VIRTIO_BLK_S_IOERR, unknown ones
with VIRTIO_BLK_S_UNSUPP, as QEMU does.
"""

from __future__ import annotations

import logging
import struct
from typing import Callable, Dict, List, Tuple

from ...block.backend import BlockBackend
from ...block.errors import BlockError
from ...memory import GuestMemory
from . import spec
from .device import VirtioDevice
from .iovec import descriptor_views, gather, scatter, split_at, total_length
from .queue import DescriptorChain, VirtqueueError

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

_HEADER = struct.Struct("<IIQ")  # type, ioprio, sector
_SEGMENT = struct.Struct("<QII")  # sector, num_sectors, flags
# struct virtio_blk_config up to write_zeroes_may_unmap and its padding (5.2.4): capacity,
# size_max, seg_max, geometry (c, h, s), blk_size, physical_block_exp, alignment_offset,
# min_io_size, opt_io_size, writeback, unused, num_queues, max_discard_sectors,
# max_discard_seg, discard_sector_alignment, max_write_zeroes_sectors, max_write_zeroes_seg,
# write_zeroes_may_unmap, 3 bytes of padding.
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")


class VirtioBlock(VirtioDevice):
    """One disk; ``serial`` is what VIRTIO_BLK_T_GET_ID returns (20 bytes at most);
    ``discard=False`` (QEMU's discard=ignore) leaves DISCARD unoffered."""

    device_id = spec.ID_BLOCK
    name = "virtio-blk"
    runs_on_iothread = True

    def __init__(self, memory: GuestMemory, backend: BlockBackend, serial: str = "",
                 discard: bool = True) -> None:
        features = spec.bit(F_SEG_MAX) | spec.bit(F_BLK_SIZE) | spec.bit(F_FLUSH)
        if backend.read_only:
            features |= spec.bit(F_RO)
        else:
            features |= spec.bit(F_WRITE_ZEROES) | (spec.bit(F_DISCARD) if discard else 0)
        super().__init__(memory, [QUEUE_SIZE], features)
        self.backend = backend
        self.serial = serial.encode()[:ID_BYTES]
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
        used = 0
        for chain in queue.iter_available(self.memory):
            queue.add_used(self.memory, chain.head, self._handle(chain))
            used += 1
            if queue.event_idx:
                # The driver's used_event says when it wants to hear: it can refill the
                # queue while the rest of the batch is still being served.
                self.signal_used(queue)
                used = 0
        if used:
            self.signal_used(queue)

    def _handle(self, chain: DescriptorChain) -> int:
        """Run one request; the number of bytes written into the guest's buffers."""
        request_type, sector, out_data, in_data, status_view = self._parse(chain)
        handler = self._handlers.get(request_type)
        if handler is None:
            status, written = S_UNSUPP, 0
        else:
            try:
                status, written = handler(sector, out_data, in_data)
            except (BlockError, OSError) as err:
                log.warning("%s: request type %d at sector %d failed: %s",
                            self.backend.filename, request_type, sector, err)
                status, written = S_IOERR, 0
        status_view[0] = status
        return written + 1

    def _parse(self, chain: DescriptorChain) -> Tuple[int, int, List[memoryview], List[memoryview], memoryview]:
        """(type, sector, data to the device, data from the device, the status byte)."""
        descriptors = chain.descriptors
        first, last = descriptors[0], descriptors[-1]
        if (len(descriptors) >= 2 and not first.writable and first.length == _HEADER.size
                and last.writable and last.length == 1):
            # How every driver frames it (header, data..., status, each in its own
            # descriptor): no byte-level splitting, which costs more than the I/O for 4 KiB.
            memory = self.memory
            request_type, _ioprio, sector = _HEADER.unpack(memory.read(first.gpa, _HEADER.size))
            out_data: List[memoryview] = []
            in_data: List[memoryview] = []
            for d in descriptors[1:-1]:
                if d.length:
                    (in_data if d.writable else out_data).append(memory.view(d.gpa, d.length))
            return request_type, sector, out_data, in_data, memory.view(last.gpa, 1)
        header_views, out_data = split_at(descriptor_views(self.memory, chain.readable), _HEADER.size)
        writable = descriptor_views(self.memory, chain.writable)
        if total_length(header_views) < _HEADER.size:
            raise VirtqueueError(f"request {chain.head}: header shorter than {_HEADER.size} bytes")
        in_length = total_length(writable) - 1
        if in_length < 0:
            raise VirtqueueError(f"request {chain.head}: no writable byte for the status")
        in_data, status_views = split_at(writable, in_length)
        request_type, _ioprio, sector = _HEADER.unpack(gather(header_views))
        return request_type, sector, out_data, in_data, status_views[0]

    def _data_range(self, sector: int, length: int) -> bool:
        return length % SECTOR_SIZE == 0 and sector + length // SECTOR_SIZE <= self.capacity

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

    def close(self) -> None:
        self.backend.close()

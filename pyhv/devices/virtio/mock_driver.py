"""A driver-side mock of virtio for tests: rings laid out in a GuestMemory, descriptor
chains (direct and indirect), kicks through the MMIO registers, used-ring reads.

Every device is tested the way a guest drives it, as with rust-vmm's ``MockSplitQueue``.
The mock also writes raw descriptors, so tests can build the hostile cases (loops,
out-of-RAM buffers, bad indirect tables) that a real driver never would.

Split rings are :class:`MockSplitQueue`, packed rings :class:`MockPackedQueue`; the drivers
(this MMIO one and pci/mock_driver.py) set up packed ones when the device offers
VIRTIO_F_RING_PACKED and the test does not drop it, as Linux does. Both kinds take chains
with ``add_chain``/``add_indirect_chain``, ``publish`` them and return ``take_used``.
"""

from __future__ import annotations

import collections
import struct
from typing import Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from ...memory import GuestMemory
from . import mmio, spec
from .packed import (DESC_F_AVAIL, DESC_F_USED, EVENT_FLAG_DESC, EVENT_FLAG_DISABLE, EVENT_FLAG_ENABLE,
                     EVENT_FLAGS_OFFSET, EVENT_OFFSET_MASK, EVENT_SUPPRESS_SIZE, EVENT_WRAP_SHIFT, PackedQueue,
                     avail_flags, event_passed, lap_position, used_flags)
from .queue import (DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESCRIPTOR_SIZE, USED_F_NO_NOTIFY, SplitQueue,
                    memory_fence)


class Buffer(NamedTuple):
    gpa: int
    length: int
    writable: bool


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class DataArea:
    """Where a mock driver places its request buffers: one after the other in guest RAM from
    ``start``, each on a 16-byte boundary unless asked for more. A guest's block layer hands
    the device whole pages (``align=4096``); where a buffer starts inside a cache line
    changes what the host's copies cost (1 MiB writes from 16 bytes into a line: 9.4 GB/s,
    from a page boundary: 13.7 GB/s, on a 2-core AMD EPYC host)."""

    def __init__(self, memory: GuestMemory, start: int) -> None:
        self.memory = memory
        self.cursor = start

    def alloc(self, size: int, fill: int = 0, align: int = 16) -> int:
        """A fresh buffer of ``size`` bytes filled with ``fill``: its guest address."""
        gpa = align_up(self.cursor, align)
        self.cursor = align_up(gpa + size, 16)
        self.memory.fill(gpa, size, fill)
        return gpa


class MockSplitQueue:
    """The driver's half of one split queue of ``size`` entries placed at ``base``."""

    def __init__(self, memory: GuestMemory, base: int, size: int) -> None:
        self.memory = memory
        self.size = size
        self.desc_table = base
        self.avail_ring = align_up(base + DESCRIPTOR_SIZE * size, 2)
        self.used_ring = align_up(self.avail_ring + 6 + 2 * size, 4)
        self.end = self.used_ring + 6 + 8 * size
        memory.fill(base, self.end - base)
        self.next_free = 0
        self.avail_idx = 0
        self.kicked_idx = 0  # avail_idx when kick_needed last ran
        self.last_used = 0

    @property
    def addresses(self) -> Tuple[int, int, int]:
        """What the transport's three queue address registers get."""
        return self.desc_table, self.avail_ring, self.used_ring

    def write_descriptor(self, index: int, gpa: int, length: int, flags: int = 0, next_index: int = 0,
                         table: Optional[int] = None) -> None:
        table = self.desc_table if table is None else table
        self.memory.write(table + DESCRIPTOR_SIZE * index, struct.pack("<QIHH", gpa, length, flags, next_index))

    def add_chain(self, buffers: Sequence[Buffer]) -> int:
        """Write ``buffers`` as linked descriptors; the head index (not yet published)."""
        indices = [(self.next_free + i) % self.size for i in range(len(buffers))]
        self.next_free = (self.next_free + len(buffers)) % self.size
        for i, (index, buf) in enumerate(zip(indices, buffers)):
            last = i == len(buffers) - 1
            flags = (0 if last else DESC_F_NEXT) | (DESC_F_WRITE if buf.writable else 0)
            self.write_descriptor(index, buf.gpa, buf.length, flags, 0 if last else indices[i + 1])
        return indices[0]

    def add_indirect_chain(self, buffers: Sequence[Buffer], table_gpa: int) -> int:
        """Write ``buffers`` into an indirect table at ``table_gpa``, referenced by one descriptor."""
        for i, buf in enumerate(buffers):
            last = i == len(buffers) - 1
            flags = (0 if last else DESC_F_NEXT) | (DESC_F_WRITE if buf.writable else 0)
            self.write_descriptor(i, buf.gpa, buf.length, flags, 0 if last else i + 1, table=table_gpa)
        head = self.next_free
        self.next_free = (self.next_free + 1) % self.size
        self.write_descriptor(head, table_gpa, DESCRIPTOR_SIZE * len(buffers), DESC_F_INDIRECT)
        return head

    def publish(self, head: int) -> None:
        """Put ``head`` in the available ring and advance its index."""
        self.memory.write_u16(self.avail_ring + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)

    def set_used_event(self, value: int) -> None:
        self.memory.write_u16(self.avail_ring + 4 + 2 * self.size, value)

    def set_no_interrupt(self, on: bool) -> None:
        self.memory.write_u16(self.avail_ring, 1 if on else 0)

    def kick_needed(self, event_idx: bool) -> bool:
        """Whether the entries published since the last call need a kick, as Linux's
        virtqueue_kick_prepare decides: a full barrier after publishing the index, then
        avail_event (with EVENT_IDX, ``event_idx``) or the used ring's NO_NOTIFY flag."""
        memory_fence()
        old, new = self.kicked_idx, self.avail_idx
        self.kicked_idx = new
        if event_idx:
            # vring_need_event: did the index step over avail_event?
            return (new - self.avail_event() - 1) & 0xFFFF < (new - old) & 0xFFFF
        return not self.memory.read_u16(self.used_ring) & USED_F_NO_NOTIFY

    def used_idx(self) -> int:
        return self.memory.read_u16(self.used_ring + 2)

    def avail_event(self) -> int:
        return self.memory.read_u16(self.used_ring + 4 + 8 * self.size)

    def take_used(self) -> List[Tuple[int, int]]:
        """(head, length) of every used entry added since the last call."""
        entries = []
        used_idx = self.used_idx()
        while self.last_used != used_idx:
            slot = self.used_ring + 4 + 8 * (self.last_used % self.size)
            entries.append((self.memory.read_u32(slot), self.memory.read_u32(slot + 4)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return entries


class MockPackedQueue:
    """The driver's half of one packed queue of ``size`` entries placed at ``base``, written
    as Linux's virtio_ring writes it: a chain's descriptors in ring order, each with the
    AVAIL/USED bits of the lap it lies in, the head's flags withheld until :meth:`publish`;
    buffer ids from a free list; used descriptors read in ring order, stepping over the
    slots each buffer's chain took."""

    _ENTRY = struct.Struct("<QIHH")  # addr, len, buffer id, flags

    def __init__(self, memory: GuestMemory, base: int, size: int) -> None:
        self.memory = memory
        self.size = size
        self.desc_ring = base
        self.driver_area = base + DESCRIPTOR_SIZE * size
        self.device_area = self.driver_area + EVENT_SUPPRESS_SIZE
        self.end = self.device_area + EVENT_SUPPRESS_SIZE
        memory.fill(base, self.end - base)
        self.next_avail = 0  # ring position of the next chain
        self.avail_wrap = 1
        self.kicked = lap_position(0, 1, size)  # where kick_needed last looked
        self.last_used = 0
        self.used_wrap = 1
        self.free_ids: Deque[int] = collections.deque(range(size))
        self.free_slots = size
        self.slots_of: Dict[int, int] = {}  # buffer id -> ring slots its chain took
        self.unpublished: Dict[int, Tuple[int, int]] = {}  # buffer id -> (head slot, head flags)

    @property
    def addresses(self) -> Tuple[int, int, int]:
        """What the transport's three queue address registers get."""
        return self.desc_ring, self.driver_area, self.device_area

    def avail_flags(self) -> int:
        """The AVAIL/USED bits that make a descriptor available at the next ring position."""
        return avail_flags(self.avail_wrap)

    def write_descriptor(self, index: int, gpa: int, length: int, flags: int = 0, buffer_id: int = 0,
                         table: Optional[int] = None) -> None:
        """One raw descriptor, flags exactly as given (tests add :meth:`avail_flags` themselves)."""
        table = self.desc_ring if table is None else table
        self.memory.write(table + DESCRIPTOR_SIZE * index, self._ENTRY.pack(gpa, length, buffer_id, flags))

    def _take(self, slots: int) -> Tuple[int, int, int]:
        """A free buffer id and the first ring slot and wrap counter for ``slots`` slots."""
        if slots > self.free_slots or not self.free_ids:
            raise AssertionError(f"no room for {slots} descriptors: {self.free_slots} slots free")
        buffer_id = self.free_ids.popleft()
        start, wrap = self.next_avail, self.avail_wrap
        self.free_slots -= slots
        self.slots_of[buffer_id] = slots
        self.next_avail += slots
        if self.next_avail >= self.size:
            self.next_avail -= self.size
            self.avail_wrap ^= 1
        return buffer_id, start, wrap

    def _write_head(self, buffer_id: int, index: int, gpa: int, length: int, flags: int) -> None:
        """Everything of the head but its flags, which :meth:`publish` writes."""
        self.memory.write(self.desc_ring + DESCRIPTOR_SIZE * index, struct.pack("<QIH", gpa, length, buffer_id))
        self.unpublished[buffer_id] = (index, flags)

    def add_chain(self, buffers: Sequence[Buffer]) -> int:
        """Write ``buffers`` into consecutive ring slots; the buffer id (not yet published)."""
        buffer_id, index, wrap = self._take(len(buffers))
        for i, buf in enumerate(buffers):
            flags = ((DESC_F_NEXT if i < len(buffers) - 1 else 0) | (DESC_F_WRITE if buf.writable else 0)
                     | avail_flags(wrap))
            if i == 0:
                self._write_head(buffer_id, index, buf.gpa, buf.length, flags)
            else:
                self.write_descriptor(index, buf.gpa, buf.length, flags, buffer_id)
            index += 1
            if index == self.size:
                index, wrap = 0, wrap ^ 1
        return buffer_id

    def add_indirect_chain(self, buffers: Sequence[Buffer], table_gpa: int) -> int:
        """Write ``buffers`` into an indirect table at ``table_gpa`` (unlinked: a packed table's
        entries are all used, in order), referenced by one ring slot."""
        for i, buf in enumerate(buffers):
            self.write_descriptor(i, buf.gpa, buf.length, DESC_F_WRITE if buf.writable else 0, table=table_gpa)
        buffer_id, index, wrap = self._take(1)
        self._write_head(buffer_id, index, table_gpa, DESCRIPTOR_SIZE * len(buffers),
                         DESC_F_INDIRECT | avail_flags(wrap))
        return buffer_id

    def publish(self, head: int) -> None:
        """Make buffer ``head`` available: its head's flags, last."""
        index, flags = self.unpublished.pop(head)
        self.memory.write_u16(self.desc_ring + DESCRIPTOR_SIZE * index + self._ENTRY.size - 2, flags)

    def kick_needed(self, event_idx: bool) -> bool:
        """Whether the chains added since the last call need a kick, as Linux decides for a
        packed ring after a full barrier: the device's flags, and in DESC mode (the device
        sets it only with EVENT_IDX) whether the driver stepped over the position it names."""
        memory_fence()
        old, new = self.kicked, lap_position(self.next_avail, self.avail_wrap, self.size)
        self.kicked = new
        off_wrap, flags = self.device_event()
        if flags != EVENT_FLAG_DESC:
            return flags != EVENT_FLAG_DISABLE
        event = lap_position(off_wrap & EVENT_OFFSET_MASK, off_wrap >> EVENT_WRAP_SHIFT, self.size)
        return event_passed(event, new, old, self.size)

    def device_event(self) -> Tuple[int, int]:
        """The device event suppression area: (off_wrap, flags)."""
        return self.memory.read_u16(self.device_area), self.memory.read_u16(self.device_area + EVENT_FLAGS_OFFSET)

    def set_driver_event(self, flags: int, index: int = 0, wrap: int = 1) -> None:
        """The driver event suppression area: position (and wrap counter) first, then flags."""
        self.memory.write_u16(self.driver_area, index | wrap << EVENT_WRAP_SHIFT)
        self.memory.write_u16(self.driver_area + EVENT_FLAGS_OFFSET, flags)

    def set_no_interrupt(self, on: bool) -> None:
        self.set_driver_event(EVENT_FLAG_DISABLE if on else EVENT_FLAG_ENABLE)

    def used_position(self) -> Tuple[int, int]:
        """Where the driver will look for the next used buffer, and the wrap counter there."""
        return self.last_used, self.used_wrap

    def take_used(self) -> List[Tuple[int, int]]:
        """(buffer id, length) of every used buffer added since the last call."""
        entries = []
        while True:
            _addr, length, buffer_id, flags = self._ENTRY.unpack(
                self.memory.read(self.desc_ring + DESCRIPTOR_SIZE * self.last_used, DESCRIPTOR_SIZE))
            if flags & (DESC_F_AVAIL | DESC_F_USED) != used_flags(self.used_wrap):
                return entries
            slots = self.slots_of.pop(buffer_id, None)
            if slots is None:
                raise AssertionError(f"the device used buffer id {buffer_id}, which is not in flight")
            entries.append((buffer_id, length))
            self.free_ids.append(buffer_id)
            self.free_slots += slots
            self.last_used += slots
            if self.last_used >= self.size:
                self.last_used -= self.size
                self.used_wrap ^= 1


MockQueue = Union[MockSplitQueue, MockPackedQueue]
DeviceQueue = Union[SplitQueue, PackedQueue]


def connect(queue: DeviceQueue, mock: MockQueue, event_idx: bool = False, indirect: bool = True) -> DeviceQueue:
    """Point a device-side ``queue`` at the rings ``mock`` laid out, ready, with the
    features given, as the transport's registers and the feature negotiation would."""
    queue.size = mock.size
    queue.desc_table, queue.avail_ring, queue.used_ring = mock.addresses
    queue.ready, queue.event_idx, queue.indirect = True, event_idx, indirect
    return queue


def mock_queue(memory: GuestMemory, base: int, size: int, packed: bool) -> MockQueue:
    """The driver's half of a queue of the layout the features chose."""
    return MockPackedQueue(memory, base, size) if packed else MockSplitQueue(memory, base, size)


class MockMmioDriver:
    """Drives a :class:`~pyhv.devices.virtio.mmio.VirtioMmioTransport` through its registers."""

    def __init__(self, transport: mmio.VirtioMmioTransport, memory: GuestMemory,
                 ring_area: int = 0x10000, data_area: int = 0x100000) -> None:
        self.transport = transport
        self.memory = memory
        self.queues: List[MockQueue] = []
        self.packed = False  # VIRTIO_F_RING_PACKED accepted
        self._ring_cursor = ring_area
        self._data = DataArea(memory, data_area)

    def read32(self, offset: int) -> int:
        return self.transport.read(offset, 4)

    def write32(self, offset: int, value: int) -> None:
        self.transport.write(offset, 4, value)

    def alloc(self, size: int, fill: int = 0, align: int = 16) -> int:
        """A fresh buffer in the data area, filled with ``fill`` (see :class:`DataArea`)."""
        return self._data.alloc(size, fill, align)

    def features(self) -> int:
        self.write32(mmio.DEVICE_FEATURES_SEL, 0)
        low = self.read32(mmio.DEVICE_FEATURES)
        self.write32(mmio.DEVICE_FEATURES_SEL, 1)
        return low | self.read32(mmio.DEVICE_FEATURES) << 32

    def negotiate(self, drop_features: int = 0) -> int:
        """Reset, ACKNOWLEDGE, DRIVER, accept every offered feature but ``drop_features``,
        FEATURES_OK; the accepted features (FEATURES_OK must stick)."""
        self.write32(mmio.STATUS, 0)
        self.write32(mmio.STATUS, spec.STATUS_ACKNOWLEDGE)
        self.write32(mmio.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER)
        accepted = self.features() & ~drop_features
        for select in (0, 1):
            self.write32(mmio.DRIVER_FEATURES_SEL, select)
            self.write32(mmio.DRIVER_FEATURES, accepted >> (32 * select) & 0xFFFF_FFFF)
        self.write32(mmio.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK)
        if not self.read32(mmio.STATUS) & spec.STATUS_FEATURES_OK:
            raise AssertionError("the device refused FEATURES_OK")
        self.packed = bool(accepted >> spec.F_RING_PACKED & 1)
        return accepted

    def setup_queue(self, index: int, size: Optional[int] = None) -> MockQueue:
        self.write32(mmio.QUEUE_SEL, index)
        size = self.read32(mmio.QUEUE_NUM_MAX) if size is None else size
        queue = mock_queue(self.memory, self._ring_cursor, max(size, 1), self.packed)
        self._ring_cursor = align_up(queue.end, 4096)
        queue.size = size
        self.write32(mmio.QUEUE_NUM, size)
        for low, address in zip((mmio.QUEUE_DESC_LOW, mmio.QUEUE_DRIVER_LOW, mmio.QUEUE_DEVICE_LOW),
                                queue.addresses):
            self.write32(low, address & 0xFFFF_FFFF)
            self.write32(low + 4, address >> 32)
        self.write32(mmio.QUEUE_READY, 1)
        while len(self.queues) <= index:
            self.queues.append(None)  # type: ignore[arg-type]
        self.queues[index] = queue
        return queue

    def start(self, queue_count: int, drop_features: int = 0, queue_size: Optional[int] = None) -> int:
        """The whole initialisation sequence (3.1.1); the accepted features."""
        accepted = self.negotiate(drop_features)
        for index in range(queue_count):
            self.setup_queue(index, queue_size)
        self.write32(mmio.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK
                     | spec.STATUS_DRIVER_OK)
        return accepted

    def kick(self, index: int) -> None:
        self.write32(mmio.QUEUE_NOTIFY, index)

    def submit(self, index: int, buffers: Sequence[Buffer], indirect: bool = False) -> int:
        """Add a chain to queue ``index``, publish it and kick; its head."""
        queue = self.queues[index]
        if indirect:
            head = queue.add_indirect_chain(buffers, self.alloc(DESCRIPTOR_SIZE * len(buffers)))
        else:
            head = queue.add_chain(buffers)
        queue.publish(head)
        self.kick(index)
        return head

    def status(self) -> int:
        return self.read32(mmio.STATUS)

    def needs_reset(self) -> bool:
        return bool(self.status() & spec.STATUS_DEVICE_NEEDS_RESET)

    def interrupt_status(self) -> int:
        return self.read32(mmio.INTERRUPT_STATUS)

    def ack_interrupts(self) -> int:
        causes = self.interrupt_status()
        self.write32(mmio.INTERRUPT_ACK, causes)
        return causes

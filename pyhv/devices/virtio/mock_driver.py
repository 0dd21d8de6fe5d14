"""A driver-side mock of virtio for tests: rings laid out in a GuestMemory, descriptor
chains (direct and indirect), kicks through the MMIO registers, used-ring reads.

Every device is tested the way a guest drives it, as with rust-vmm's ``MockSplitQueue``.
The mock also writes raw descriptors, so tests can build the hostile cases (loops,
out-of-RAM buffers, bad indirect tables) that a real driver never would.
"""

from __future__ import annotations

import struct
from typing import List, NamedTuple, Optional, Sequence, Tuple

from ...memory import GuestMemory
from . import mmio, spec
from .queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESCRIPTOR_SIZE, USED_F_NO_NOTIFY, memory_fence


class Buffer(NamedTuple):
    gpa: int
    length: int
    writable: bool


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class MockSplitQueue:
    """The driver's half of one split queue of ``size`` entries placed at ``base``."""

    def __init__(self, memory: GuestMemory, base: int, size: int) -> None:
        self.memory = memory
        self.size = size
        self.desc_table = base
        self.avail_ring = _align(base + DESCRIPTOR_SIZE * size, 2)
        self.used_ring = _align(self.avail_ring + 6 + 2 * size, 4)
        self.end = self.used_ring + 6 + 8 * size
        memory.fill(base, self.end - base)
        self.next_free = 0
        self.avail_idx = 0
        self.kicked_idx = 0  # avail_idx when kick_needed last ran
        self.last_used = 0

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


class MockMmioDriver:
    """Drives a :class:`~pyhv.devices.virtio.mmio.VirtioMmioTransport` through its registers."""

    def __init__(self, transport: mmio.VirtioMmioTransport, memory: GuestMemory,
                 ring_area: int = 0x10000, data_area: int = 0x100000) -> None:
        self.transport = transport
        self.memory = memory
        self.queues: List[MockSplitQueue] = []
        self._ring_cursor = ring_area
        self._data_cursor = data_area

    def read32(self, offset: int) -> int:
        return self.transport.read(offset, 4)

    def write32(self, offset: int, value: int) -> None:
        self.transport.write(offset, 4, value)

    def alloc(self, size: int, fill: int = 0) -> int:
        """A fresh buffer in the data area (16-byte aligned), filled with ``fill``."""
        gpa = self._data_cursor
        self._data_cursor = _align(gpa + size, 16)
        self.memory.fill(gpa, size, fill)
        return gpa

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
        return accepted

    def setup_queue(self, index: int, size: Optional[int] = None) -> MockSplitQueue:
        self.write32(mmio.QUEUE_SEL, index)
        size = self.read32(mmio.QUEUE_NUM_MAX) if size is None else size
        queue = MockSplitQueue(self.memory, self._ring_cursor, max(size, 1))
        self._ring_cursor = _align(queue.end, 4096)
        queue.size = size
        self.write32(mmio.QUEUE_NUM, size)
        for low, address in ((mmio.QUEUE_DESC_LOW, queue.desc_table), (mmio.QUEUE_DRIVER_LOW, queue.avail_ring),
                             (mmio.QUEUE_DEVICE_LOW, queue.used_ring)):
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

"""Split virtqueues (virtio 1.2, 2.7): descriptor table, available ring, used ring.

The guest is hostile. Every address and length it gives is checked against guest RAM
through :class:`GuestMemory` before anything is read or handed to a device; chains have
a length limit (a loop is a chain that never ends, so the limit catches it too), indirect
tables are validated, and a ring index that jumps further than the queue is long is
refused. Whatever the guest did wrong ends in :class:`VirtqueueError`, which the device
turns into DEVICE_NEEDS_RESET; nothing here raises anything else for guest input.

As in rust-vmm's virtio-queue, the methods take the guest memory as a parameter instead
of keeping it, so a queue is plain state and tests can point it at any memory.
"""

from __future__ import annotations

import functools
import struct
import threading
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Type, TypeVar

from ...errors import GuestAddressError
from ...memory import GuestMemory
from ...runtime_env import ON_PYPY

DESC_F_NEXT = 0x1
DESC_F_WRITE = 0x2
DESC_F_INDIRECT = 0x4
AVAIL_F_NO_INTERRUPT = 0x1
USED_F_NO_NOTIFY = 0x1

DESCRIPTOR_SIZE = 16
USED_ELEM_SIZE = 8
MAX_QUEUE_SIZE = 32768  # the largest split queue the spec allows (2.7)
# addr, len, flags, next. The address is read signed: PyPy makes every "Q" field a long
# integer, and each sum or comparison with it a call; one of 2**63 and up is negative and
# refused like any other address outside guest RAM.
_DESCRIPTOR = struct.Struct("<qIHH")
MASK64 = 0xFFFF_FFFF_FFFF_FFFF  # the address as the driver wrote it, in messages
T = TypeVar("T")


_FENCE = threading.Lock()


def memory_fence() -> None:
    """A full memory barrier (x86 MFENCE semantics): taking a lock is an atomic
    read-modify-write, which orders every earlier store before every later load. Needed
    where a store to one ring field is followed by a load of a field the other side
    stores, with the same order there (Linux's virtio_mb)."""
    _FENCE.acquire()
    _FENCE.release()


class VirtqueueError(Exception):
    """The guest broke a virtqueue rule. A guest fault, not a host error: the device
    reports it to the guest with DEVICE_NEEDS_RESET instead of stopping the VM."""


class Descriptor(NamedTuple):
    """One guest buffer of a chain, already checked to lie inside guest RAM."""

    gpa: int
    length: int
    writable: bool


def namedtuple_maker(cls: Type[T]) -> Callable[[tuple], T]:
    """``maker((a, b, ...))`` builds a ``cls``. On CPython it skips the NamedTuple's
    ``__new__``, a Python function whose call costs about a thousand machine instructions;
    the queues build one for each buffer and each request (callgrind, virtio-blk 4 KiB
    reads: 5% of the device's and driver's work together). PyPy's JIT inlines either."""
    if ON_PYPY:
        return cls._make  # type: ignore[attr-defined]
    return functools.partial(tuple.__new__, cls)


new_descriptor = namedtuple_maker(Descriptor)


class DescriptorChain(NamedTuple):
    """An available request: the head index (what goes back in the used ring) and buffers."""

    head: int
    descriptors: List[Descriptor]
    # Ring (or descriptor table) entries the chain takes: an indirect chain takes one. A
    # device that has every available chain in hand and their slots fill the queue knows
    # the driver can offer nothing more until it gives some back.
    slots: int = 1

    @property
    def readable(self) -> List[Descriptor]:
        return [d for d in self.descriptors if not d.writable]

    @property
    def writable(self) -> List[Descriptor]:
        return [d for d in self.descriptors if d.writable]


new_chain = namedtuple_maker(DescriptorChain)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def check_areas(memory: GuestMemory, areas: Sequence[Tuple[str, int, int, int]]) -> None:
    """Each (name, address, size, alignment) area of a queue is aligned and in guest RAM."""
    for name, gpa, size, alignment in areas:
        if gpa % alignment:
            raise VirtqueueError(f"{name} at {gpa:#x} is not {alignment}-byte aligned")
        if not memory.contains(gpa, size):
            raise VirtqueueError(f"{name} at {gpa:#x}+{size:#x} is outside guest RAM")


def indirect_table(memory: GuestMemory, addr: int, length: int) -> memoryview:
    """The table an INDIRECT descriptor points at, after the checks both ring layouts share:
    whole descriptors, at least one, no more than the largest queue, inside guest RAM."""
    if length == 0 or length % DESCRIPTOR_SIZE or length // DESCRIPTOR_SIZE > MAX_QUEUE_SIZE:
        raise VirtqueueError(
            f"indirect table at {addr & MASK64:#x} has length {length}, not a non-zero multiple "
            f"of {DESCRIPTOR_SIZE} up to {MAX_QUEUE_SIZE} entries")
    if not memory.contains(addr, length):
        raise VirtqueueError(f"indirect table at {addr & MASK64:#x}+{length:#x} is outside guest RAM")
    return memory.view(addr, length)


class QueueSetup:
    """What the transport's registers and the negotiated features set for a queue, the same
    for both ring layouts (the three addresses carry the split layout's names)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        self.event_idx = False  # VIRTIO_F_EVENT_IDX negotiated
        self.indirect = False  # VIRTIO_F_INDIRECT_DESC negotiated


class SplitQueue(QueueSetup):
    """Device-side state of one split virtqueue, as the transport's registers set it."""

    def __init__(self, max_size: int) -> None:
        if not _is_power_of_two(max_size) or max_size > MAX_QUEUE_SIZE:
            raise ValueError(f"queue maximum {max_size} is not a power of two up to {MAX_QUEUE_SIZE}")
        super().__init__(max_size)

    def reset(self) -> None:
        super().reset()
        self.next_avail = 0
        self.next_used = 0
        self.signalled_used: Optional[int] = None
        self.draining = False  # between disable_notifications and enable_notifications

    # --- layout -------------------------------------------------------------------------
    def _avail_size(self) -> int:
        return 6 + 2 * self.size  # flags, idx, ring[size], used_event

    def _used_size(self) -> int:
        return 6 + USED_ELEM_SIZE * self.size  # flags, idx, ring[size], avail_event

    def validate(self, memory: GuestMemory) -> None:
        """Check the size and the three ring areas before the device uses the queue."""
        if not _is_power_of_two(self.size) or self.size > self.max_size:
            raise VirtqueueError(f"queue size {self.size} is not a power of two up to {self.max_size}")
        check_areas(memory, (
            ("descriptor table", self.desc_table, DESCRIPTOR_SIZE * self.size, 16),
            ("available ring", self.avail_ring, self._avail_size(), 2),
            ("used ring", self.used_ring, self._used_size(), 4),
        ))

    # --- guest memory access (every read is bounds-checked by GuestMemory) ----------------
    @staticmethod
    def _read_u16(memory: GuestMemory, gpa: int) -> int:
        try:
            return memory.read_u16(gpa)
        except GuestAddressError as err:
            raise VirtqueueError(str(err)) from err

    @staticmethod
    def _write_u16(memory: GuestMemory, gpa: int, value: int) -> None:
        try:
            memory.write_u16(gpa, value)
        except GuestAddressError as err:
            raise VirtqueueError(str(err)) from err

    def avail_idx(self, memory: GuestMemory) -> int:
        return self._read_u16(memory, self.avail_ring + 2)

    def pending(self, memory: GuestMemory, limit: Optional[int] = None) -> int:
        """How many chains the driver made available that the device has not taken (the
        exact count whatever ``limit``, which spares :class:`PackedQueue` a walk)."""
        return self._ahead(self.avail_idx(memory))

    def _ahead(self, avail_idx: int) -> int:
        count = (avail_idx - self.next_avail) & 0xFFFF
        if count > self.size:
            raise VirtqueueError(
                f"available index moved {count} entries ahead of the device, more than the "
                f"queue size {self.size}")
        return count

    # --- the available side -------------------------------------------------------------
    def pop(self, memory: GuestMemory) -> Optional[DescriptorChain]:
        """The next available chain, or None when the driver has made nothing more available."""
        # The ring fields are read here rather than through pending() and _read_u16: on
        # CPython each call costs about as much as the read (virtio-blk's 4 KiB requests).
        try:
            avail_idx = memory.read_u16(self.avail_ring + 2)
            if avail_idx == self.next_avail or not self._ahead(avail_idx):
                return None
            head = memory.read_u16(self.avail_ring + 4 + 2 * (self.next_avail % self.size))
        except GuestAddressError as err:
            raise VirtqueueError(str(err)) from err
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        if self.event_idx and not self.draining:
            # A consumer outside a drain (a back-end thread filling receive buffers) wants a
            # kick for the entry after this one.
            self._write_u16(memory, self.used_ring + 4 + USED_ELEM_SIZE * self.size, self.next_avail)
        descriptors, slots = self._walk_chain(memory, head)
        if memory.device_write_watchers:
            for descriptor in descriptors:
                if descriptor.writable:
                    memory.note_device_write(descriptor.gpa, descriptor.length)
        return new_chain((head, descriptors, slots))

    # --- the driver's notifications (2.7.10) ------------------------------------------------
    def disable_notifications(self, memory: GuestMemory) -> None:
        """While the device drains the ring, the driver need not kick it (QEMU does the same).
        With EVENT_IDX, avail_event simply stays behind: the driver kicks only when it
        publishes the entry avail_event names, which the device is already past."""
        self.draining = True
        if not self.event_idx:
            self._write_u16(memory, self.used_ring, USED_F_NO_NOTIFY)

    def enable_notifications(self, memory: GuestMemory) -> bool:
        """Ask for a kick at the next entry the driver publishes; True when entries were
        published meanwhile (whose kick the driver skipped), so the device must drain again."""
        self.draining = False
        if self.event_idx:
            # avail_event: "kick me once you publish the entry at this index".
            self._write_u16(memory, self.used_ring + 4 + USED_ELEM_SIZE * self.size, self.next_avail)
        else:
            self._write_u16(memory, self.used_ring, 0)
        # The driver stores the avail index, then loads our field; we store the field, then
        # load its index: without a full barrier on both sides each could miss the other.
        memory_fence()
        return self.pending(memory) > 0

    def unpop(self, chain: DescriptorChain) -> None:
        """Leave ``chain``, the one :meth:`pop` returned last, for the next pop (a receive
        buffer too small for the frame at hand waits for a shorter one). Several popped
        chains go back one by one, the last popped first."""
        self.next_avail = (self.next_avail - 1) & 0xFFFF

    def iter_available(self, memory: GuestMemory) -> Iterator[DescriptorChain]:
        """Pop chains until none is left; the available index is re-read before each one,
        so buffers the driver adds meanwhile (the console's input thread) are seen too."""
        while True:
            chain = self.pop(memory)
            if chain is None:
                return
            yield chain

    @staticmethod
    def _table(memory: GuestMemory, gpa: int, entries: int) -> memoryview:
        """The descriptor table as one view: one bounds check per chain, not per descriptor."""
        try:
            return memory.view(gpa, DESCRIPTOR_SIZE * entries)
        except GuestAddressError as err:
            raise VirtqueueError(f"descriptor table at {gpa:#x}: {err}") from err

    def _walk_chain(self, memory: GuestMemory, head: int) -> Tuple[List[Descriptor], int]:
        """The chain's buffers and how many entries of the descriptor table it takes."""
        if head >= self.size:
            raise VirtqueueError(f"chain head {head} is not below the queue size {self.size}")
        table_len, index = self.size, head
        table = self._table(memory, self.desc_table, table_len)
        # Buffers in RAM below the MMIO hole (nearly all) pass one comparison; the rest
        # take GuestMemory's region walk.
        low_end = memory.regions[0].end
        unpack = _DESCRIPTOR.unpack_from
        in_indirect = False
        descriptors: List[Descriptor] = []
        while True:
            addr, length, flags, next_index = unpack(table, DESCRIPTOR_SIZE * index)
            if flags & DESC_F_INDIRECT:
                if in_indirect:
                    raise VirtqueueError(f"descriptor {index} of an indirect table is itself indirect")
                if not self.indirect:
                    raise VirtqueueError(f"descriptor {index} is indirect but INDIRECT_DESC was not negotiated")
                if descriptors or flags & DESC_F_NEXT:
                    raise VirtqueueError(f"indirect descriptor {index} is not alone in its chain")
                table = indirect_table(memory, addr, length)
                table_len, index = length // DESCRIPTOR_SIZE, 0
                in_indirect = True
                continue
            if addr < 0 or (addr + length > low_end and not memory.contains(addr, length)):
                raise VirtqueueError(f"descriptor {index} buffer {addr & MASK64:#x}+{length:#x} is outside guest RAM")
            descriptors.append(new_descriptor((addr, length, flags & DESC_F_WRITE != 0)))
            if len(descriptors) > table_len:
                # A chain visiting more descriptors than its table holds revisits one: a loop.
                raise VirtqueueError(
                    f"chain from head {head} is longer than its {table_len}-entry table (a loop?)")
            if not flags & DESC_F_NEXT:
                return descriptors, 1 if in_indirect else len(descriptors)
            if next_index >= table_len:
                raise VirtqueueError(f"descriptor {index} points to {next_index}, past the {table_len}-entry table")
            index = next_index

    # --- the used side ---------------------------------------------------------------------
    def add_used(self, memory: GuestMemory, head: int, length: int) -> None:
        """Return chain ``head`` to the driver with ``length`` bytes written into it."""
        self.add_used_batch(memory, ((head, length),))

    def add_used_batch(self, memory: GuestMemory, entries: Sequence[Tuple[int, int]]) -> None:
        """Return several (head, length) chains, in order, published by one index update: a
        driver polling the ring sees all of them or none (the buffers of one merged packet)."""
        try:
            for head, length in entries:
                slot = self.used_ring + 4 + USED_ELEM_SIZE * (self.next_used % self.size)
                memory.write_u64(slot, head | length << 32)  # struct virtq_used_elem {le32 id; le32 len}
                self.next_used = (self.next_used + 1) & 0xFFFF
        except GuestAddressError as err:
            raise VirtqueueError(str(err)) from err
        # The elements are in place before the index that publishes them (x86 keeps store order).
        self._write_u16(memory, self.used_ring + 2, self.next_used)

    def needs_notification(self, memory: GuestMemory) -> bool:
        """Whether the driver wants an interrupt for the used entries added since the last one."""
        if not self.event_idx:
            return not self._read_u16(memory, self.avail_ring) & AVAIL_F_NO_INTERRUPT
        memory_fence()  # the used index is stored before used_event is loaded (see above)
        used_event = self._read_u16(memory, self.avail_ring + 4 + 2 * self.size)
        old, new = self.signalled_used, self.next_used
        self.signalled_used = new
        if old is None:
            return True
        # vring_need_event: did the used index step over used_event since the last signal?
        return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF

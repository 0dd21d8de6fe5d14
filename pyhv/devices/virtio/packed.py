"""Packed virtqueues (virtio 1.2, 2.8): one descriptor ring and two event suppression areas.

The driver and the device share a single ring of 16-byte descriptors (addr, len, buffer id,
flags). The driver makes a chain available by writing its descriptors with the AVAIL flag
equal to its wrap counter and USED the opposite, the head's flags last; the device hands
a buffer back by writing one descriptor, in ring order whatever order buffers complete in,
with AVAIL and USED both equal to its own wrap counter, and then steps over as many ring
slots as the chain took. Each side's wrap counter starts at 1 and flips whenever its
position passes the end of the ring, so a slot's flags tell which lap they belong to.

The queue offers the interface of :class:`~pyhv.devices.virtio.queue.SplitQueue`, so devices
and transports use either kind without knowing which, with the three addresses the
transports set read as: ``desc_table`` the descriptor ring, ``avail_ring`` the driver event
suppression area (the driver says when it wants interrupts), ``used_ring`` the device event
suppression area (the device says when it wants kicks). ``next_avail`` counts the chains
taken, modulo 2**16, as the split queue's does; ring positions are kept apart.

The guest is as hostile as ever: addresses and lengths are checked against guest RAM, a
chain may not take more slots than the ring has (a driver that never clears NEXT), indirect
tables get the split queue's checks, and a buffer id must lie below the queue size and not
be in flight already; each breach raises :class:`VirtqueueError`.
"""

from __future__ import annotations

import struct
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ...errors import GuestAddressError
from ...memory import GuestMemory
from .queue import (DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESCRIPTOR_SIZE, MASK64, MAX_QUEUE_SIZE,
                    Descriptor, DescriptorChain, QueueSetup, VirtqueueError, check_areas, indirect_table,
                    memory_fence, new_chain, new_descriptor)

DESC_F_AVAIL = 1 << 7
DESC_F_USED = 1 << 15
_WRAP_BITS = DESC_F_AVAIL | DESC_F_USED

# struct pvirtq_event_suppress: off_wrap (a ring position, the wrap counter in bit 15), flags.
EVENT_SUPPRESS_SIZE = 4
EVENT_FLAGS_OFFSET = 2
EVENT_FLAG_ENABLE = 0
EVENT_FLAG_DISABLE = 1
EVENT_FLAG_DESC = 2  # only with VIRTIO_F_EVENT_IDX: at the position off_wrap names
EVENT_WRAP_SHIFT = 15
EVENT_OFFSET_MASK = (1 << EVENT_WRAP_SHIFT) - 1

# addr, len, buffer id, flags. The address is read signed, as queue.py explains: no PyPy long
# integers, and an address of 2**63 and up is negative and refused like any outside RAM.
_RING_ENTRY = struct.Struct("<qIHH")
_U16 = struct.Struct("<H")
_FLAGS_OFFSET = 14  # of a descriptor
_LENGTH_OFFSET = 8


def avail_flags(wrap: int) -> int:
    """The AVAIL/USED bits of a descriptor the driver made available in a lap of ``wrap``."""
    return DESC_F_AVAIL if wrap else DESC_F_USED


def used_flags(wrap: int) -> int:
    """The AVAIL/USED bits of a descriptor the device used in a lap of ``wrap``."""
    return _WRAP_BITS if wrap else 0


def lap_position(index: int, wrap: int, size: int) -> int:
    """A ring position and its wrap counter as one number modulo ``2 * size``, which tells
    apart every distance shorter than two laps."""
    return index + (size if wrap else 0)


def event_passed(event: int, new: int, old: int, size: int) -> bool:
    """Whether a side that moved from lap position ``old`` to ``new`` (exclusive) passed
    lap position ``event``: virtio's "notify when you reach this entry", on the packed
    ring's doubled positions. Shared with the mock driver, which decides its kicks so."""
    span = 2 * size
    return (new - event - 1) % span < (new - old) % span


class PackedQueue(QueueSetup):
    """Device-side state of one packed virtqueue, as the transport's registers set it:
    ``desc_table`` is the descriptor ring, ``avail_ring`` the driver event suppression area,
    ``used_ring`` the device event suppression area."""

    def __init__(self, max_size: int) -> None:
        if not 0 < max_size <= MAX_QUEUE_SIZE:
            raise ValueError(f"queue maximum {max_size} is not between 1 and {MAX_QUEUE_SIZE}")
        super().__init__(max_size)

    def reset(self) -> None:
        super().reset()
        self.next_avail = 0  # chains taken, modulo 2**16
        self.avail_index = 0  # ring position of the next chain's head
        self.avail_wrap = 1  # the driver's wrap counter expected there
        self.used_index = 0  # ring position of the next used descriptor
        self.used_wrap = 1
        self.signalled_used: Optional[int] = None  # lap position at the last interrupt decision
        self.used_since_decision = 0  # slots: a decision must not mistake two laps for none
        self.draining = False  # between disable_notifications and enable_notifications
        # Buffer id -> ring slots its chain took: the used descriptor steps over that many.
        self.in_flight: Dict[int, int] = {}
        self.slots_in_flight = 0

    def validate(self, memory: GuestMemory) -> None:
        """Check the size (any from 1 up: packed rings need no power of two) and the areas."""
        if not 0 < self.size <= self.max_size:
            raise VirtqueueError(f"queue size {self.size} is not between 1 and {self.max_size}")
        check_areas(memory, (
            ("descriptor ring", self.desc_table, DESCRIPTOR_SIZE * self.size, 16),
            ("driver event suppression area", self.avail_ring, EVENT_SUPPRESS_SIZE, 4),
            ("device event suppression area", self.used_ring, EVENT_SUPPRESS_SIZE, 4),
        ))

    # --- guest memory access: views, each bounds-checked once by GuestMemory ------------------
    @staticmethod
    def _view(memory: GuestMemory, gpa: int, size: int, name: str) -> memoryview:
        try:
            return memory.view(gpa, size)
        except GuestAddressError as err:
            raise VirtqueueError(f"{name}: {err}") from err

    def _ring(self, memory: GuestMemory) -> memoryview:
        """The whole ring: one bounds check per call, not per descriptor."""
        return self._view(memory, self.desc_table, DESCRIPTOR_SIZE * self.size, "descriptor ring")

    def _set_device_event(self, memory: GuestMemory, offset: int, value: int) -> None:
        """Store one field of the device's event suppression area (GuestMemory's typed store:
        the driver reads these fields while they change)."""
        try:
            memory.write_u16(self.used_ring + offset, value)
        except GuestAddressError as err:
            raise VirtqueueError(f"device event suppression area: {err}") from err

    def _head_available(self, ring: memoryview) -> bool:
        flags = _U16.unpack_from(ring, DESCRIPTOR_SIZE * self.avail_index + _FLAGS_OFFSET)[0]
        return flags & _WRAP_BITS == avail_flags(self.avail_wrap)

    # --- the available side -------------------------------------------------------------
    def pending(self, memory: GuestMemory, limit: Optional[int] = None) -> int:
        """How many whole chains the driver has made available that the device has not taken,
        counted by the flags of each slot (a ring's worth at most), or ``limit`` if there
        are at least that many: the count walks the ring, and callers rarely need it all."""
        ring = self._ring(memory)
        size, index, wrap = self.size, self.avail_index, self.avail_wrap
        chains = 0
        for _ in range(size):
            if chains == limit:
                break
            flags = _U16.unpack_from(ring, DESCRIPTOR_SIZE * index + _FLAGS_OFFSET)[0]
            if flags & _WRAP_BITS != avail_flags(wrap):
                break
            if not flags & DESC_F_NEXT:
                chains += 1
            index += 1
            if index == size:
                index, wrap = 0, wrap ^ 1
        return chains

    def pop(self, memory: GuestMemory) -> Optional[DescriptorChain]:
        """The next available chain, or None when the driver has made nothing more available."""
        ring = self._ring(memory)
        # The head's flags first, and only then the rest of the chain: the driver writes
        # them last, and x86 does not reorder loads with loads.
        if not self._head_available(ring):
            return None
        size, index = self.size, self.avail_index
        low_end = memory.regions[0].end
        unpack = _RING_ENTRY.unpack_from
        descriptors: List[Descriptor] = []
        slots = 0
        while True:
            addr, length, buffer_id, flags = unpack(ring, DESCRIPTOR_SIZE * index)
            slots += 1
            if flags & DESC_F_INDIRECT:
                if slots > 1 or flags & DESC_F_NEXT:
                    raise VirtqueueError(f"indirect descriptor at ring slot {index} is not alone in its chain")
                descriptors = self._indirect(memory, addr, length, index)
                break
            if addr < 0 or (addr + length > low_end and not memory.contains(addr, length)):
                raise VirtqueueError(
                    f"ring slot {index}: buffer {addr & MASK64:#x}+{length:#x} is outside guest RAM")
            descriptors.append(new_descriptor((addr, length, flags & DESC_F_WRITE != 0)))
            if not flags & DESC_F_NEXT:
                break
            if slots == size:
                raise VirtqueueError(
                    f"chain from ring slot {self.avail_index} still has NEXT set after all {size} slots")
            index = index + 1 if index + 1 < size else 0
        # The buffer id is the chain's last descriptor's (the driver may repeat it in others).
        if buffer_id >= size:
            raise VirtqueueError(f"buffer id {buffer_id} is not below the queue size {size}")
        if buffer_id in self.in_flight:
            raise VirtqueueError(f"buffer id {buffer_id} is made available again before it was used")
        if self.slots_in_flight + slots > size:
            # The driver wrapped onto slots whose buffers the device has not given back.
            raise VirtqueueError(f"chain at ring slot {self.avail_index} overlaps buffers still in flight")
        self.in_flight[buffer_id] = slots
        self.slots_in_flight += slots
        self._advance_avail(slots)
        if self.event_idx and not self.draining:
            # A consumer outside a drain (a back-end thread filling receive buffers) wants a
            # kick for the chain after this one.
            self._set_device_event(memory, 0, self._avail_event())
        if memory.device_write_watchers:
            for descriptor in descriptors:
                if descriptor.writable:
                    memory.note_device_write(descriptor.gpa, descriptor.length)
        return new_chain((buffer_id, descriptors, slots))

    def _indirect(self, memory: GuestMemory, addr: int, length: int, index: int) -> List[Descriptor]:
        """The buffers of an indirect table: every entry, in order (a packed table is not
        linked, and NEXT means nothing in it)."""
        if not self.indirect:
            raise VirtqueueError(f"ring slot {index} is indirect but INDIRECT_DESC was not negotiated")
        table = indirect_table(memory, addr, length)
        unpack = _RING_ENTRY.unpack_from
        descriptors: List[Descriptor] = []
        for entry in range(length // DESCRIPTOR_SIZE):
            buf_addr, buf_length, _buffer_id, flags = unpack(table, DESCRIPTOR_SIZE * entry)
            if flags & DESC_F_INDIRECT:
                raise VirtqueueError(f"entry {entry} of an indirect table is itself indirect")
            if not memory.contains(buf_addr, buf_length):
                raise VirtqueueError(
                    f"indirect entry {entry}: buffer {buf_addr & MASK64:#x}+{buf_length:#x} is outside guest RAM")
            descriptors.append(new_descriptor((buf_addr, buf_length, flags & DESC_F_WRITE != 0)))
        return descriptors

    def _advance_avail(self, slots: int) -> None:
        self.avail_index += slots
        if self.avail_index >= self.size:
            self.avail_index -= self.size
            self.avail_wrap ^= 1
        self.next_avail = (self.next_avail + 1) & 0xFFFF

    def unpop(self, chain: DescriptorChain) -> None:
        """Leave ``chain``, the one :meth:`pop` returned last, for the next pop (a receive
        buffer too small for the frame at hand waits for a shorter one). Several popped
        chains go back one by one, the last popped first."""
        slots = self.in_flight.pop(chain.head)
        self.slots_in_flight -= slots
        self.avail_index -= slots
        if self.avail_index < 0:
            self.avail_index += self.size
            self.avail_wrap ^= 1
        self.next_avail = (self.next_avail - 1) & 0xFFFF

    def iter_available(self, memory: GuestMemory) -> Iterator[DescriptorChain]:
        """Pop chains until none is left; the ring is looked at again before each one, so
        buffers the driver adds meanwhile are seen too."""
        while True:
            chain = self.pop(memory)
            if chain is None:
                return
            yield chain

    # --- the driver's notifications (the device event suppression area) -------------------
    def _avail_event(self) -> int:
        return self.avail_index | self.avail_wrap << EVENT_WRAP_SHIFT

    def disable_notifications(self, memory: GuestMemory) -> None:
        """While the device drains the ring, the driver need not kick it."""
        self.draining = True
        self._set_device_event(memory, EVENT_FLAGS_OFFSET, EVENT_FLAG_DISABLE)

    def enable_notifications(self, memory: GuestMemory) -> bool:
        """Ask for a kick at the next chain the driver makes available; True when one was
        made available meanwhile (whose kick the driver skipped), so the device must drain again."""
        self.draining = False
        if self.event_idx:
            # The position before the flags that make the driver look at it (x86 keeps
            # store order).
            self._set_device_event(memory, 0, self._avail_event())
            self._set_device_event(memory, EVENT_FLAGS_OFFSET, EVENT_FLAG_DESC)
        else:
            self._set_device_event(memory, EVENT_FLAGS_OFFSET, EVENT_FLAG_ENABLE)
        # The driver stores a head's flags, then loads ours; we store ours, then load its
        # flags: without a full barrier on both sides each could miss the other.
        memory_fence()
        return self._head_available(self._ring(memory))

    # --- the used side ---------------------------------------------------------------------
    def add_used(self, memory: GuestMemory, head: int, length: int) -> None:
        """Return buffer ``head`` (its id) to the driver with ``length`` bytes written into it."""
        self.add_used_batch(memory, ((head, length),))

    def add_used_batch(self, memory: GuestMemory, entries: Sequence[Tuple[int, int]]) -> None:
        """Return several (buffer id, length) buffers, in ring order, handed over together: the
        first descriptor's flags are written last, so a driver polling the ring sees all of
        them or none (the buffers of one merged packet)."""
        first_flags: Optional[Tuple[int, int]] = None
        try:
            for head, length in entries:
                slots = self.in_flight.pop(head, 0)
                if not slots:
                    raise VirtqueueError(f"buffer id {head} is not in flight")
                slot = self.desc_table + DESCRIPTOR_SIZE * self.used_index
                memory.write_u32(slot + _LENGTH_OFFSET, length)
                memory.write_u16(slot + _LENGTH_OFFSET + 4, head)
                # The flags hand the descriptor over: id and length are in place before them.
                flags = used_flags(self.used_wrap) | (DESC_F_WRITE if length else 0)
                if first_flags is None:
                    first_flags = (slot + _FLAGS_OFFSET, flags)
                else:
                    memory.write_u16(slot + _FLAGS_OFFSET, flags)
                self.slots_in_flight -= slots
                self.used_since_decision += slots
                self.used_index += slots
                if self.used_index >= self.size:
                    self.used_index -= self.size
                    self.used_wrap ^= 1
            if first_flags is not None:
                memory.write_u16(*first_flags)
        except GuestAddressError as err:
            raise VirtqueueError(str(err)) from err

    def needs_notification(self, memory: GuestMemory) -> bool:
        """Whether the driver wants an interrupt for the buffers used since the last decision."""
        # The used flags are stored before the driver's event area is loaded (as in
        # enable_notifications, with the roles swapped).
        memory_fence()
        area = self._view(memory, self.avail_ring, EVENT_SUPPRESS_SIZE, "driver event suppression area")
        # The flags before the position they make us look at (the driver stores them last).
        flags = _U16.unpack_from(area, EVENT_FLAGS_OFFSET)[0]
        off_wrap = _U16.unpack_from(area, 0)[0]
        size = self.size
        first = self.signalled_used is None
        new = self.signalled_used = lap_position(self.used_index, self.used_wrap, size)
        moved, self.used_since_decision = self.used_since_decision, 0
        if flags == EVENT_FLAG_DISABLE:
            return False
        if flags != EVENT_FLAG_DESC or not self.event_idx or first or moved >= 2 * size:
            # ENABLE; what a driver may not write (DESC without EVENT_IDX); the first
            # decision; or so many slots used (a driver polling the ring and refilling it)
            # that every position was passed.
            return True
        event = lap_position(off_wrap & EVENT_OFFSET_MASK, off_wrap >> EVENT_WRAP_SHIFT, size)
        return event_passed(event, new, new - moved, size)

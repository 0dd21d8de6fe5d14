"""Random packed rings: the parser either returns chains inside guest RAM or raises
VirtqueueError; it never raises anything else and never reaches outside RAM, whatever the
flags, buffer ids, indirect tables, event suppression areas and ring positions."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.devices.virtio.packed import DESC_F_AVAIL, DESC_F_USED, PackedQueue
from pyhv.devices.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESCRIPTOR_SIZE, VirtqueueError
from pyhv.memory import GuestMemory, MiB

RAM = 1 * MiB
MAX_SIZE = 8
RING, DRIVER_AREA, DEVICE_AREA, INDIRECT_AREA = 0x1000, 0x2000, 0x2004, 0x4000

addresses = st.one_of(
    st.integers(0, RAM - 1),
    st.sampled_from([RAM - 8, RAM, 0xC000_0000, 1 << 32, 1 << 63, (1 << 64) - 1, INDIRECT_AREA]),
    st.integers(0, (1 << 64) - 1),
)
lengths = st.one_of(st.integers(0, 64), st.sampled_from([16, 32, 48, 96]), st.integers(0, 0xFFFF_FFFF))

flag_bits = st.one_of(
    st.sampled_from([0, DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT, DESC_F_NEXT | DESC_F_WRITE]).flatmap(
        lambda low: st.sampled_from([low, low | DESC_F_AVAIL, low | DESC_F_USED, low | DESC_F_AVAIL | DESC_F_USED])),
    st.integers(0, 0xFFFF),
)
buffer_ids = st.one_of(st.integers(0, MAX_SIZE), st.integers(0, 0xFFFF))
descriptor = st.tuples(addresses, lengths, buffer_ids, flag_bits)
# Descriptors a driver could have made available in either lap, so that whole chains and
# indirect tables get parsed often, not only the first slot's refusal.
lap_bits = st.sampled_from([DESC_F_AVAIL, DESC_F_USED])
plausible = st.one_of(
    st.tuples(st.integers(0, RAM - 64), st.integers(0, 64), st.integers(0, MAX_SIZE - 1),
              st.tuples(st.sampled_from([0, DESC_F_NEXT, DESC_F_WRITE]), lap_bits).map(sum)),
    st.tuples(st.just(INDIRECT_AREA), st.sampled_from([16, 32, 48, 96]), st.integers(0, MAX_SIZE - 1),
              lap_bits.map(lambda bits: bits | DESC_F_INDIRECT)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(1, MAX_SIZE),
       ring=st.lists(st.one_of(descriptor, plausible), min_size=MAX_SIZE, max_size=MAX_SIZE),
       indirect_table=st.lists(descriptor, min_size=0, max_size=6),
       start=st.tuples(st.integers(0, MAX_SIZE - 1), st.integers(0, 1)),
       driver_event=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
       event_idx=st.booleans(), indirect=st.booleans(), complete_reversed=st.booleans())
def test_random_rings_never_escape(size, ring, indirect_table, start, driver_event, event_idx, indirect,
                                   complete_reversed):
    memory = GuestMemory(RAM)
    accesses = []  # every range the queue reads or writes goes through _offset
    offset = memory._offset
    memory._offset = lambda gpa, length: (accesses.append((gpa, length)), offset(gpa, length))[1]
    try:
        for i, entry in enumerate(ring):
            memory.write(RING + DESCRIPTOR_SIZE * i, struct.pack("<QIHH", *entry))
        for i, entry in enumerate(indirect_table):
            memory.write(INDIRECT_AREA + DESCRIPTOR_SIZE * i, struct.pack("<QIHH", *entry))
        memory.write(DRIVER_AREA, struct.pack("<HH", *driver_event))
        queue = PackedQueue(MAX_SIZE)
        queue.size = size
        queue.desc_table, queue.avail_ring, queue.used_ring = RING, DRIVER_AREA, DEVICE_AREA
        queue.event_idx, queue.indirect, queue.ready = event_idx, indirect, True
        # Somewhere in the ring's life: the device's positions need not start at slot 0.
        queue.avail_index = queue.used_index = start[0] % size
        queue.avail_wrap = queue.used_wrap = start[1]
        queue.validate(memory)
        try:
            queue.disable_notifications(memory)
            chains = []
            for _ in range(2 * MAX_SIZE):
                assert queue.pending(memory) <= size
                _addr, head_length, _id, head_flags = struct.unpack_from(
                    "<QIHH", memory.read(RING + DESCRIPTOR_SIZE * queue.avail_index, DESCRIPTOR_SIZE))
                chain = queue.pop(memory)
                if chain is None:
                    break
                assert 0 <= chain.head < size
                # A chain in the ring takes at most every slot; an indirect one holds exactly
                # the entries its table's length says (past what the test wrote: zeros).
                if head_flags & DESC_F_INDIRECT:
                    assert len(chain.descriptors) == head_length // DESCRIPTOR_SIZE
                else:
                    assert len(chain.descriptors) <= size
                for desc in chain.descriptors:
                    assert memory.contains(desc.gpa, desc.length)
                chains.append(chain)
            assert sum(queue.in_flight.values()) <= size
            for chain in reversed(chains) if complete_reversed else chains:
                queue.add_used(memory, chain.head, 0)
                queue.needs_notification(memory)
            assert not queue.in_flight
            queue.enable_notifications(memory)
        except VirtqueueError:
            pass
        for gpa, length in accesses:
            assert 0 <= gpa and gpa + length <= RAM
    finally:
        memory.close()

"""Random descriptor tables and rings: the parser either returns chains inside guest RAM
or raises VirtqueueError; it never raises anything else and never reaches outside RAM."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.devices.virtio.queue import DESCRIPTOR_SIZE, SplitQueue, VirtqueueError
from pyhv.memory import GuestMemory, MiB

RAM = 1 * MiB
SIZE = 8
DESC_TABLE, AVAIL, USED, INDIRECT_AREA = 0x1000, 0x2000, 0x3000, 0x4000


class WatchedMemory(GuestMemory):
    """GuestMemory that records every access range the queue asks for."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.accesses = []

    def _offset(self, gpa: int, size: int) -> int:
        self.accesses.append((gpa, size))
        return super()._offset(gpa, size)


addresses = st.one_of(
    st.integers(0, RAM - 1),
    st.sampled_from([RAM - 1, RAM, 0xC000_0000, 1 << 32, (1 << 64) - 1, INDIRECT_AREA]),
    st.integers(0, (1 << 64) - 1),
)
lengths = st.one_of(st.integers(0, 64), st.sampled_from([16, 32, 48, 96]), st.integers(0, 0xFFFF_FFFF))
descriptor = st.tuples(addresses, lengths, st.integers(0, 7), st.one_of(st.integers(0, SIZE), st.integers(0, 0xFFFF)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.lists(descriptor, min_size=SIZE, max_size=SIZE),
       indirect_table=st.lists(descriptor, min_size=0, max_size=6),
       ring=st.lists(st.one_of(st.integers(0, SIZE), st.integers(0, 0xFFFF)), min_size=SIZE, max_size=SIZE),
       avail_idx=st.one_of(st.integers(0, SIZE + 1), st.integers(0, 0xFFFF)),
       event_idx=st.booleans())
def test_random_tables_never_escape(table, indirect_table, ring, avail_idx, event_idx):
    memory = WatchedMemory(RAM)
    try:
        for i, entry in enumerate(table):
            memory.write(DESC_TABLE + DESCRIPTOR_SIZE * i, struct.pack("<QIHH", *entry))
        for i, entry in enumerate(indirect_table):
            memory.write(INDIRECT_AREA + DESCRIPTOR_SIZE * i, struct.pack("<QIHH", *entry))
        for i, head in enumerate(ring):
            memory.write_u16(AVAIL + 4 + 2 * i, head)
        memory.write_u16(AVAIL + 2, avail_idx)
        queue = SplitQueue(SIZE)
        queue.desc_table, queue.avail_ring, queue.used_ring = DESC_TABLE, AVAIL, USED
        queue.event_idx, queue.indirect, queue.ready = event_idx, True, True
        queue.validate(memory)
        try:
            for _ in range(2 * SIZE):
                chain = queue.pop(memory)
                if chain is None:
                    break
                assert len(chain.descriptors) <= max(SIZE, len(indirect_table))
                for desc in chain.descriptors:
                    assert memory.contains(desc.gpa, desc.length)
                queue.add_used(memory, chain.head, 0)
                queue.needs_notification(memory)
        except VirtqueueError:
            pass
        for gpa, size in memory.accesses:
            assert 0 <= gpa and gpa + size <= RAM
    finally:
        memory.close()

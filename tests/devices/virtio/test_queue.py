"""Split virtqueue parsing, used ring and notification rules, driven by the mock driver."""

from __future__ import annotations

import pytest

from pyhv.devices.virtio.mock_driver import Buffer, MockSplitQueue, connect
from pyhv.devices.virtio.queue import (DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, Descriptor, SplitQueue,
                                       VirtqueueError, namedtuple_maker)
from pyhv.memory import GuestMemory, MiB

RAM = 2 * MiB


@pytest.fixture
def memory():
    mem = GuestMemory(RAM)
    yield mem
    mem.close()


def make_queue(memory, size=16, max_size=16, event_idx=False, indirect=True):
    driver = MockSplitQueue(memory, 0x1000, size)
    return driver, connect(SplitQueue(max_size), driver, event_idx, indirect)


def test_direct_chain_round_trip(memory):
    driver, queue = make_queue(memory)
    queue.validate(memory)
    head = driver.add_chain([Buffer(0x8000, 16, False), Buffer(0x9000, 512, True), Buffer(0xA000, 1, True)])
    driver.publish(head)
    chain = queue.pop(memory)
    assert chain.head == head
    assert chain.descriptors == [Descriptor(0x8000, 16, False), Descriptor(0x9000, 512, True),
                                 Descriptor(0xA000, 1, True)]
    assert queue.pop(memory) is None
    queue.add_used(memory, chain.head, 513)
    assert driver.take_used() == [(head, 513)]


def test_indirect_chain(memory):
    driver, queue = make_queue(memory)
    head = driver.add_indirect_chain([Buffer(0x8000, 16, False), Buffer(0x9000, 8, True)], 0x20000)
    driver.publish(head)
    chain = queue.pop(memory)
    assert chain.descriptors == [Descriptor(0x8000, 16, False), Descriptor(0x9000, 8, True)]
    assert chain.readable == [Descriptor(0x8000, 16, False)]
    assert chain.writable == [Descriptor(0x9000, 8, True)]


def test_ring_indices_wrap_past_65535(memory):
    driver, queue = make_queue(memory, size=4, max_size=4)
    queue.next_avail = queue.next_used = 0xFFFE
    driver.set_avail_idx(0xFFFE)
    driver.last_used = 0xFFFE
    heads = []
    for i in range(4):
        head = driver.add_chain([Buffer(0x8000 + 0x100 * i, 8, True)])
        driver.publish(head)
        heads.append(head)
    popped = [chain.head for chain in queue.iter_available(memory)]
    assert popped == heads
    for head in popped:
        queue.add_used(memory, head, 8)
    assert driver.used_idx() == 2
    assert [h for h, _ in driver.take_used()] == heads


def test_event_idx_publishes_avail_event_and_honours_used_event(memory):
    driver, queue = make_queue(memory, event_idx=True)
    for _ in range(3):
        driver.publish(driver.add_chain([Buffer(0x8000, 8, True)]))
    chains = list(queue.iter_available(memory))
    assert driver.avail_event() == 3
    driver.set_used_event(1)  # the driver wants an interrupt once entry 1 is used
    queue.add_used(memory, chains[0].head, 0)
    assert queue.needs_notification(memory)  # the first signal always goes out
    queue.add_used(memory, chains[1].head, 0)
    assert queue.needs_notification(memory)  # used idx stepped over 1 -> 2
    queue.add_used(memory, chains[2].head, 0)
    assert not queue.needs_notification(memory)  # 3: used_event 1 already passed


def test_no_interrupt_flag_without_event_idx(memory):
    driver, queue = make_queue(memory)
    driver.publish(driver.add_chain([Buffer(0x8000, 8, True)]))
    chain = queue.pop(memory)
    queue.add_used(memory, chain.head, 0)
    assert queue.needs_notification(memory)
    driver.set_no_interrupt(True)
    assert not queue.needs_notification(memory)


@pytest.mark.parametrize("size", [0, 3, 12, 32])
def test_bad_queue_size_is_refused(memory, size):
    _driver, queue = make_queue(memory, size=16, max_size=16)
    queue.size = size
    with pytest.raises(VirtqueueError, match="power of two"):
        queue.validate(memory)


def test_rings_outside_ram_are_refused(memory):
    _driver, queue = make_queue(memory)
    queue.used_ring = RAM - 8
    with pytest.raises(VirtqueueError, match="used ring .* outside guest RAM"):
        queue.validate(memory)
    queue.used_ring = 0x3002
    with pytest.raises(VirtqueueError, match="aligned"):
        queue.validate(memory)


def test_max_size_must_be_power_of_two():
    with pytest.raises(ValueError):
        SplitQueue(100)


HOSTILE = {
    "buffer outside RAM": lambda d: d.write_descriptor(0, RAM - 4, 8),
    "buffer address overflows": lambda d: d.write_descriptor(0, (1 << 64) - 8, 16),
    # Read signed by the device (see queue._DESCRIPTOR): negative, and refused all the same.
    "buffer address with the top bit set": lambda d: d.write_descriptor(0, 1 << 63, 8),
    "indirect table address with the top bit set": lambda d: d.write_descriptor(0, (1 << 63) + 0x20000, 16,
                                                                                DESC_F_INDIRECT),
    "oversized length": lambda d: d.write_descriptor(0, 0x8000, 0xFFFF_FFFF),
    "self loop": lambda d: d.write_descriptor(0, 0x8000, 8, DESC_F_NEXT, 0),
    "two-entry loop": lambda d: (d.write_descriptor(0, 0x8000, 8, DESC_F_NEXT, 1),
                                 d.write_descriptor(1, 0x8000, 8, DESC_F_NEXT, 0)),
    "next past the table": lambda d: d.write_descriptor(0, 0x8000, 8, DESC_F_NEXT, 16),
    "indirect length not a multiple of 16": lambda d: d.write_descriptor(0, 0x20000, 24, DESC_F_INDIRECT),
    "indirect length zero": lambda d: d.write_descriptor(0, 0x20000, 0, DESC_F_INDIRECT),
    "indirect table outside RAM": lambda d: d.write_descriptor(0, RAM - 16, 32, DESC_F_INDIRECT),
    "indirect with next": lambda d: d.write_descriptor(0, 0x20000, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1),
    "nested indirect": lambda d: (d.write_descriptor(0, 0x20000, 16, DESC_F_INDIRECT),
                                  d.write_descriptor(0, 0x30000, 16, DESC_F_INDIRECT, table=0x20000)),
    "indirect after a direct descriptor": lambda d: (d.write_descriptor(0, 0x8000, 8, DESC_F_NEXT, 1),
                                                     d.write_descriptor(1, 0x20000, 16, DESC_F_INDIRECT)),
    "loop inside an indirect table": lambda d: (
        d.write_descriptor(0, 0x20000, 32, DESC_F_INDIRECT),
        d.write_descriptor(0, 0x8000, 8, DESC_F_NEXT, 1, table=0x20000),
        d.write_descriptor(1, 0x8000, 8, DESC_F_NEXT | DESC_F_WRITE, 0, table=0x20000)),
    "indirect buffer outside RAM": lambda d: (d.write_descriptor(0, 0x20000, 16, DESC_F_INDIRECT),
                                              d.write_descriptor(0, 3 * RAM, 8, table=0x20000)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_chains_raise_virtqueue_error(memory, case):
    driver, queue = make_queue(memory)
    HOSTILE[case](driver)
    driver.publish(0)
    with pytest.raises(VirtqueueError):
        queue.pop(memory)


def test_an_address_with_the_top_bit_set_is_reported_as_the_driver_wrote_it(memory):
    driver, queue = make_queue(memory)
    driver.write_descriptor(0, 0xFFFF_FFFF_FFFF_F000, 8)
    driver.publish(0)
    with pytest.raises(VirtqueueError, match="buffer 0xfffffffffffff000[+]0x8 is outside guest RAM"):
        queue.pop(memory)


def test_head_past_queue_size(memory):
    driver, queue = make_queue(memory)
    driver.publish(16)
    with pytest.raises(VirtqueueError, match="head 16"):
        queue.pop(memory)


def test_available_index_jumping_too_far(memory):
    driver, queue = make_queue(memory)
    driver.set_avail_idx(17)
    with pytest.raises(VirtqueueError, match="more than the queue size"):
        queue.pop(memory)


def test_indirect_refused_when_not_negotiated(memory):
    driver, queue = make_queue(memory, indirect=False)
    driver.publish(driver.add_indirect_chain([Buffer(0x8000, 8, True)], 0x20000))
    with pytest.raises(VirtqueueError, match="not negotiated"):
        queue.pop(memory)


def test_longest_legal_chain_is_accepted(memory):
    driver, queue = make_queue(memory)
    driver.publish(driver.add_chain([Buffer(0x8000 + 16 * i, 16, True) for i in range(16)]))
    assert len(queue.pop(memory).descriptors) == 16


def test_pop_tells_the_memory_watchers_which_buffers_the_device_will_write(memory):
    """The software CPU drops code it translated from a buffer a device is about to fill."""
    driver, queue = make_queue(memory)
    queue.validate(memory)
    seen = []
    memory.device_write_watchers.append(lambda gpa, length: seen.append((gpa, length)))
    head = driver.add_chain([Buffer(0x8000, 16, False), Buffer(0x9000, 512, True), Buffer(0xA000, 1, True)])
    driver.publish(head)
    queue.pop(memory)
    assert seen == [(0x9000, 512), (0xA000, 1)]


def test_popped_chains_go_back_last_first_and_a_batch_is_published_by_one_index_write(memory, monkeypatch):
    driver, queue = make_queue(memory)
    heads = [driver.add_chain([Buffer(0x8000 + 0x100 * i, 64, True)] * (i + 1)) for i in range(3)]
    for head in heads:
        driver.publish(head)
    chains = [queue.pop(memory) for _ in heads]
    assert [chain.slots for chain in chains] == [1, 2, 3]
    for chain in reversed(chains[1:]):
        queue.unpop(chain)
    assert [queue.pop(memory).head for _ in range(2)] == heads[1:]
    written = []
    write_u16 = memory.write_u16
    monkeypatch.setattr(memory, "write_u16", lambda gpa, value: (written.append(gpa), write_u16(gpa, value)))
    queue.add_used_batch(memory, [(head, 10 + i) for i, head in enumerate(heads)])
    assert written == [driver.used_ring + 2]  # the used index, once, after all three elements
    assert driver.take_used() == [(heads[0], 10), (heads[1], 11), (heads[2], 12)]


def test_an_indirect_chain_takes_one_table_entry(memory):
    driver, queue = make_queue(memory)
    driver.publish(driver.add_indirect_chain([Buffer(0x8000, 8, True)] * 3, 0x20000))
    assert queue.pop(memory).slots == 1


def test_namedtuple_maker_builds_the_same_tuple_as_the_class():
    built = namedtuple_maker(Descriptor)((0x1000, 512, True))
    assert type(built) is Descriptor
    assert built == Descriptor(0x1000, 512, True)
    assert (built.gpa, built.length, built.writable) == (0x1000, 512, True)

"""Packed virtqueue parsing, used descriptors, wrap counters and event suppression, driven
by the mock driver as Linux's virtio_ring would write the ring."""

from __future__ import annotations

import random

import pytest

from pyhv.devices.virtio import packed
from pyhv.devices.virtio.mock_driver import Buffer, MockPackedQueue, connect
from pyhv.devices.virtio.packed import (DESC_F_AVAIL, DESC_F_USED, EVENT_FLAG_DESC, EVENT_FLAG_DISABLE,
                                        EVENT_FLAG_ENABLE, PackedQueue)
from pyhv.devices.virtio.queue import (DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, MAX_QUEUE_SIZE, Descriptor,
                                       VirtqueueError)
from pyhv.memory import MiB

RAM = 4 * MiB  # conftest's memory
A = DESC_F_AVAIL  # the flags of a descriptor made available in the first lap


def make_queue(memory, size=8, max_size=8, event_idx=False, indirect=True):
    driver = MockPackedQueue(memory, 0x1000, size)
    queue = connect(PackedQueue(max_size), driver, event_idx, indirect)
    queue.validate(memory)
    return driver, queue


def submit(driver, buffers):
    head = driver.add_chain(buffers)
    driver.publish(head)
    return head


def use_one(driver, queue, memory):
    """A one-slot chain through the whole cycle (the driver does not take it back)."""
    submit(driver, [Buffer(0x8000, 8, True)])
    queue.add_used(memory, queue.pop(memory).head, 0)


def test_direct_chain_round_trip(memory):
    driver, queue = make_queue(memory)
    head = submit(driver, [Buffer(0x8000, 16, False), Buffer(0x9000, 512, True), Buffer(0xA000, 1, True)])
    chain = queue.pop(memory)
    assert chain.head == head
    assert chain.descriptors == [Descriptor(0x8000, 16, False), Descriptor(0x9000, 512, True),
                                 Descriptor(0xA000, 1, True)]
    assert queue.pop(memory) is None
    assert driver.take_used() == []
    queue.add_used(memory, chain.head, 513)
    assert driver.take_used() == [(head, 513)]
    assert driver.used_position() == (3, 1)  # the used buffer stepped over all three slots


def test_a_chain_is_available_only_once_its_head_flags_are_written(memory):
    driver, queue = make_queue(memory)
    head = driver.add_chain([Buffer(0x8000, 8, True), Buffer(0x9000, 8, True)])
    assert queue.pending(memory) == 0 and queue.pop(memory) is None
    driver.publish(head)
    assert queue.pending(memory) == 1
    assert queue.pop(memory).head == head


def test_used_descriptor_flags_are_written_last(memory):
    """Length and id first, then the flags that hand the descriptor to the driver."""
    driver, queue = make_queue(memory)
    submit(driver, [Buffer(0x8000, 8, True)])
    chain = queue.pop(memory)
    writes = []
    for name in ("write_u16", "write_u32", "write_u64", "write"):
        original = getattr(memory, name)
        setattr(memory, name, lambda gpa, value, _o=original, _n=name: (writes.append((_n, gpa)), _o(gpa, value)))
    queue.add_used(memory, chain.head, 8)
    assert writes[-1] == ("write_u16", driver.desc_ring + 14)
    assert {gpa for _name, gpa in writes} == {driver.desc_ring + 8, driver.desc_ring + 12, driver.desc_ring + 14}


@pytest.mark.parametrize("size", [1, 3, 5, 8])
def test_wrap_counters_across_many_wraps(memory, size):
    """Hundreds of laps of chains of 1 to 3 slots (never more than the ring), with chains
    crossing the ring's end; every buffer comes back with its id and length."""
    driver, queue = make_queue(memory, size=size, max_size=8)
    rng = random.Random(size)
    flips = slots = 0
    last_wrap = queue.avail_wrap
    for round_number in range(400):
        count = rng.randint(1, min(3, size))
        buffers = [Buffer(0x8000 + 0x100 * i + round_number, 8 + i, i % 2 == 1) for i in range(count)]
        head = submit(driver, buffers)
        chain = queue.pop(memory)
        assert chain.head == head
        assert chain.descriptors == [Descriptor(b.gpa, b.length, b.writable) for b in buffers]
        queue.add_used(memory, chain.head, round_number)
        assert driver.take_used() == [(head, round_number)]
        assert (queue.avail_index, queue.avail_wrap) == (driver.next_avail, driver.avail_wrap)
        assert (queue.used_index, queue.used_wrap) == driver.used_position()
        flips += queue.avail_wrap != last_wrap
        last_wrap = queue.avail_wrap
        slots += count
    assert flips == slots // size  # once a lap
    assert queue.next_avail == 400


def test_out_of_order_completion_steps_over_each_chains_slots(memory):
    driver, queue = make_queue(memory, size=8)
    heads = [submit(driver, [Buffer(0x8000 + 0x1000 * n + i, 8, True) for i in range(n)]) for n in (1, 2, 3)]
    chains = list(queue.iter_available(memory))
    assert [c.head for c in chains] == heads
    for index in (2, 0, 1):  # the three-slot chain finishes first
        queue.add_used(memory, chains[index].head, index)
    assert driver.take_used() == [(heads[2], 2), (heads[0], 0), (heads[1], 1)]
    assert driver.used_position() == (6, 1)
    # The ring goes on from there, across its end: slots 6, 7, 0, 1 hold the next chain.
    head = submit(driver, [Buffer(0x20000 + i, 4, False) for i in range(4)])
    chain = queue.pop(memory)
    assert chain.head == head and [d.gpa for d in chain.descriptors] == [0x20000, 0x20001, 0x20002, 0x20003]
    assert (queue.avail_index, queue.avail_wrap) == (2, 0)
    queue.add_used(memory, head, 0)
    assert driver.take_used() == [(head, 0)]
    assert driver.used_position() == (2, 0)


def test_buffers_in_flight_fill_the_whole_ring(memory):
    driver, queue = make_queue(memory, size=4)
    heads = [submit(driver, [Buffer(0x8000 + i, 1, True)]) for i in range(4)]
    assert queue.pending(memory) == 4
    chains = list(queue.iter_available(memory))
    assert [c.head for c in chains] == heads and queue.pop(memory) is None
    for chain in reversed(chains):
        queue.add_used(memory, chain.head, 1)
    assert driver.take_used() == [(h, 1) for h in reversed(heads)]


def test_indirect_chain_takes_one_slot(memory):
    driver, queue = make_queue(memory)
    buffers = [Buffer(0x8000, 16, False), Buffer(0x9000, 8, True), Buffer(0xA000, 1, True)]
    head = driver.add_indirect_chain(buffers, 0x20000)
    driver.publish(head)
    chain = queue.pop(memory)
    assert chain.head == head
    assert chain.descriptors == [Descriptor(b.gpa, b.length, b.writable) for b in buffers]
    assert queue.avail_index == 1
    queue.add_used(memory, chain.head, 9)
    assert driver.take_used() == [(head, 9)]
    assert driver.used_position() == (1, 1)


def test_indirect_table_entries_are_taken_in_order_whatever_next_says(memory):
    driver, queue = make_queue(memory)
    driver.write_descriptor(0, 0x8000, 8, DESC_F_NEXT, table=0x20000)
    driver.write_descriptor(1, 0x9000, 8, DESC_F_WRITE, table=0x20000)
    driver.write_descriptor(2, 0xA000, 8, DESC_F_WRITE | DESC_F_NEXT, table=0x20000)
    driver.write_descriptor(0, 0x20000, 48, A | DESC_F_INDIRECT, buffer_id=5)
    chain = queue.pop(memory)
    assert chain.head == 5 and [d.gpa for d in chain.descriptors] == [0x8000, 0x9000, 0xA000]


def test_an_indirect_chain_needs_indirect_desc(memory):
    driver, queue = make_queue(memory)
    head = driver.add_indirect_chain([Buffer(0x8000, 8, True)], 0x20000)
    driver.publish(head)
    queue.indirect = False  # VIRTIO_F_INDIRECT_DESC not negotiated
    with pytest.raises(VirtqueueError, match="not negotiated"):
        queue.pop(memory)
    queue.indirect = True
    assert queue.pop(memory) == (head, [Descriptor(0x8000, 8, True)], 1)  # one ring slot


def test_buffer_id_comes_from_the_last_descriptor(memory):
    driver, queue = make_queue(memory)
    driver.write_descriptor(1, 0x9000, 8, A, buffer_id=6)
    driver.write_descriptor(0, 0x8000, 8, A | DESC_F_NEXT, buffer_id=2)
    assert queue.pop(memory).head == 6


def test_pending_counts_whole_chains(memory):
    driver, queue = make_queue(memory)
    submit(driver, [Buffer(0x8000, 8, True)] * 3)
    submit(driver, [Buffer(0x8000, 8, True)])
    driver.add_chain([Buffer(0x8000, 8, True)])  # not published
    assert queue.pending(memory) == 2


def test_pending_stops_counting_at_the_limit(memory):
    driver, queue = make_queue(memory)
    for _ in range(5):
        submit(driver, [Buffer(0x8000, 8, True)])
    assert [queue.pending(memory, limit) for limit in (1, 3, 5, 8, None)] == [1, 3, 5, 5, 5]


def test_unpop_leaves_the_chain_for_the_next_pop(memory):
    driver, queue = make_queue(memory, size=4)
    for _ in range(3):  # move the ring so that the chain crosses its end
        use_one(driver, queue, memory)
    driver.take_used()
    head = submit(driver, [Buffer(0x9000, 8, True), Buffer(0xA000, 8, True)])
    chain = queue.pop(memory)
    assert (queue.avail_index, queue.avail_wrap, queue.next_avail) == (1, 0, 4)
    queue.unpop(chain)
    assert (queue.avail_index, queue.avail_wrap, queue.next_avail) == (3, 1, 3)
    again = queue.pop(memory)
    assert again == chain and again.head == head
    queue.add_used(memory, head, 3)
    assert driver.take_used() == [(head, 3)]


def test_pop_tells_the_memory_watchers_which_buffers_the_device_will_write(memory):
    driver, queue = make_queue(memory)
    seen = []
    memory.device_write_watchers.append(lambda gpa, length: seen.append((gpa, length)))
    submit(driver, [Buffer(0x8000, 16, False), Buffer(0x9000, 512, True)])
    queue.pop(memory)
    assert seen == [(0x9000, 512)]


# --- event suppression ------------------------------------------------------------------------
def test_driver_flags_enable_and_disable_interrupts(memory):
    driver, queue = make_queue(memory)
    use_one(driver, queue, memory)
    assert queue.needs_notification(memory)  # ENABLE: the ring starts zeroed
    use_one(driver, queue, memory)
    driver.set_no_interrupt(True)
    assert not queue.needs_notification(memory)
    driver.set_no_interrupt(False)
    use_one(driver, queue, memory)
    assert queue.needs_notification(memory)


def test_desc_mode_without_event_idx_interrupts_always(memory):
    driver, queue = make_queue(memory, event_idx=False)
    driver.set_driver_event(EVENT_FLAG_DESC, index=7)
    for _ in range(3):
        use_one(driver, queue, memory)
        assert queue.needs_notification(memory)


def test_event_idx_desc_mode_interrupts_when_the_named_slot_is_used(memory):
    driver, queue = make_queue(memory, size=4, max_size=4, event_idx=True)
    driver.set_driver_event(EVENT_FLAG_DESC, index=1, wrap=1)
    decisions = []
    for _ in range(6):  # slots 0, 1, 2, 3, then 0, 1 of the second lap
        use_one(driver, queue, memory)
        driver.take_used()
        decisions.append(queue.needs_notification(memory))
    # The first decision always interrupts; then only slot 1 of the first lap (wrap 1).
    assert decisions == [True, True, False, False, False, False]


def test_event_idx_desc_mode_names_a_slot_in_the_next_lap(memory):
    driver, queue = make_queue(memory, size=4, max_size=4, event_idx=True)
    use_one(driver, queue, memory)
    assert queue.needs_notification(memory)
    driver.set_driver_event(EVENT_FLAG_DESC, index=0, wrap=0)  # slot 0 once the ring has wrapped
    decisions = []
    for _ in range(5):  # slots 1, 2, 3, then 0 and 1 with wrap 0
        use_one(driver, queue, memory)
        driver.take_used()
        decisions.append(queue.needs_notification(memory))
    assert decisions == [False, False, False, True, False]


def test_event_idx_decision_over_a_batch(memory):
    """Several buffers used before one decision: interrupt if any of them is the named one."""
    driver, queue = make_queue(memory, size=8, event_idx=True)
    use_one(driver, queue, memory)
    queue.needs_notification(memory)
    driver.set_driver_event(EVENT_FLAG_DESC, index=3, wrap=1)
    for _ in range(3):  # slots 1, 2, 3
        use_one(driver, queue, memory)
    assert queue.needs_notification(memory)
    for _ in range(3):  # 4, 5, 6
        use_one(driver, queue, memory)
    assert not queue.needs_notification(memory)


@pytest.mark.parametrize("event_idx", [False, True])
def test_disable_and_enable_kicks(memory, event_idx):
    driver, queue = make_queue(memory, event_idx=event_idx)
    assert driver.kick_needed(event_idx) is True  # nothing added, but the ring starts at ENABLE
    queue.disable_notifications(memory)
    assert driver.device_event()[1] == EVENT_FLAG_DISABLE
    submit(driver, [Buffer(0x8000, 8, True)])
    assert not driver.kick_needed(event_idx)
    # Enabling finds the chain the driver added without a kick.
    assert queue.enable_notifications(memory) is True
    off_wrap, flags = driver.device_event()
    if event_idx:
        assert (flags, off_wrap) == (EVENT_FLAG_DESC, 0 | 1 << 15)
    else:
        assert flags == EVENT_FLAG_ENABLE
    queue.add_used(memory, queue.pop(memory).head, 0)
    assert queue.enable_notifications(memory) is False
    # Idle: the next chain wants a kick, and (EVENT_IDX) the device names slot 1.
    if event_idx:
        assert driver.device_event() == (1 | 1 << 15, EVENT_FLAG_DESC)
    submit(driver, [Buffer(0x8000, 8, True)])
    assert driver.kick_needed(event_idx)


def test_event_idx_kick_is_skipped_past_the_named_slot(memory):
    driver, queue = make_queue(memory, event_idx=True)
    queue.enable_notifications(memory)  # "kick me for slot 0"
    submit(driver, [Buffer(0x8000, 8, True)])
    assert driver.kick_needed(True)
    submit(driver, [Buffer(0x8000, 8, True)])  # slot 1: the device has not seen slot 0 yet
    assert not driver.kick_needed(True)


def test_pop_outside_a_drain_names_the_next_slot_with_event_idx(memory):
    driver, queue = make_queue(memory, size=4, max_size=4, event_idx=True)
    queue.enable_notifications(memory)
    for _ in range(4):
        submit(driver, [Buffer(0x8000, 8, True)])
    queue.pop(memory)
    assert driver.device_event()[0] == 1 | 1 << 15
    queue.disable_notifications(memory)
    queue.pop(memory)
    assert driver.device_event()[0] == 1 | 1 << 15  # while draining it stays behind
    queue.enable_notifications(memory)
    queue.pop(memory), queue.pop(memory)
    assert driver.device_event()[0] == 0  # slot 0 of the next lap: wrap counter 0


# --- set-up ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 3, 100, 128])
def test_any_queue_size_up_to_the_maximum_is_accepted(memory, size):
    _driver, queue = make_queue(memory, size=size, max_size=128)
    queue.validate(memory)


@pytest.mark.parametrize("size", [0, 129, 0xFFFF])
def test_queue_size_zero_or_above_the_maximum_is_refused(memory, size):
    _driver, queue = make_queue(memory, size=8, max_size=128)
    queue.size = size
    with pytest.raises(VirtqueueError, match="between 1 and 128"):
        queue.validate(memory)


@pytest.mark.parametrize("area, address, message", [
    ("desc_table", 0x1008, "descriptor ring at 0x1008 is not 16-byte aligned"),
    ("desc_table", RAM - 64, "descriptor ring .* outside guest RAM"),
    ("avail_ring", 0x3002, "driver event suppression area at 0x3002 is not 4-byte aligned"),
    ("avail_ring", RAM, "driver event suppression area .* outside guest RAM"),
    ("used_ring", 0x3006, "device event suppression area at 0x3006 is not 4-byte aligned"),
    ("used_ring", 1 << 40, "device event suppression area .* outside guest RAM"),
])
def test_misplaced_areas_are_refused(memory, area, address, message):
    _driver, queue = make_queue(memory)
    setattr(queue, area, address)
    with pytest.raises(VirtqueueError, match=message):
        queue.validate(memory)


@pytest.mark.parametrize("max_size", [0, MAX_QUEUE_SIZE + 1])
def test_max_size_bounds(max_size):
    with pytest.raises(ValueError):
        PackedQueue(max_size)
    assert PackedQueue(100).size == 100


def test_add_used_of_a_buffer_not_in_flight(memory):
    _driver, queue = make_queue(memory)
    with pytest.raises(VirtqueueError, match="buffer id 3 is not in flight"):
        queue.add_used(memory, 3, 0)


def test_reset_forgets_the_ring(memory):
    driver, queue = make_queue(memory)
    submit(driver, [Buffer(0x8000, 8, True)])
    queue.pop(memory)
    queue.reset()
    assert (queue.avail_index, queue.avail_wrap, queue.used_index, queue.used_wrap) == (0, 1, 0, 1)
    assert queue.in_flight == {} and queue.next_avail == 0 and not queue.ready


# --- hostile rings ------------------------------------------------------------------------------
def _endless(d):
    for index in range(d.size):
        d.write_descriptor(index, 0x8000, 8, A | DESC_F_NEXT)


HOSTILE = {
    "buffer outside RAM": lambda d: d.write_descriptor(0, RAM - 4, 8, A),
    "buffer address overflows": lambda d: d.write_descriptor(0, (1 << 64) - 8, 16, A),
    "buffer address with the top bit set": lambda d: d.write_descriptor(0, 1 << 63, 8, A),
    "oversized length": lambda d: d.write_descriptor(0, 0x8000, 0xFFFF_FFFF, A),
    "second buffer outside RAM": lambda d: (d.write_descriptor(0, 0x8000, 8, A | DESC_F_NEXT),
                                            d.write_descriptor(1, 4 * RAM, 8, A)),
    "NEXT never cleared": _endless,
    "buffer id past the queue size": lambda d: d.write_descriptor(0, 0x8000, 8, A, buffer_id=8),
    "buffer id 0xffff": lambda d: d.write_descriptor(0, 0x8000, 8, A, buffer_id=0xFFFF),
    "buffer id in flight twice": lambda d: (d.write_descriptor(0, 0x8000, 8, A, buffer_id=3),
                                            d.write_descriptor(1, 0x8000, 8, A, buffer_id=3)),
    "indirect length not a multiple of 16": lambda d: d.write_descriptor(0, 0x20000, 24, A | DESC_F_INDIRECT),
    "indirect length zero": lambda d: d.write_descriptor(0, 0x20000, 0, A | DESC_F_INDIRECT),
    "indirect table longer than any queue": lambda d: d.write_descriptor(
        0, 0x20000, 16 * (MAX_QUEUE_SIZE + 1), A | DESC_F_INDIRECT),
    "indirect table outside RAM": lambda d: d.write_descriptor(0, RAM - 16, 32, A | DESC_F_INDIRECT),
    "indirect table address with the top bit set": lambda d: d.write_descriptor(
        0, (1 << 63) + 0x20000, 16, A | DESC_F_INDIRECT),
    "indirect with next": lambda d: (d.write_descriptor(0, 0x20000, 16, A | DESC_F_INDIRECT | DESC_F_NEXT),
                                     d.write_descriptor(1, 0x8000, 8, A)),
    "nested indirect": lambda d: (d.write_descriptor(0, 0x20000, 16, A | DESC_F_INDIRECT),
                                  d.write_descriptor(0, 0x30000, 16, DESC_F_INDIRECT, table=0x20000)),
    "indirect after a direct descriptor": lambda d: (d.write_descriptor(0, 0x8000, 8, A | DESC_F_NEXT),
                                                     d.write_descriptor(1, 0x20000, 16, A | DESC_F_INDIRECT)),
    "indirect buffer outside RAM": lambda d: (d.write_descriptor(0, 0x20000, 32, A | DESC_F_INDIRECT),
                                              d.write_descriptor(0, 0x8000, 8, table=0x20000),
                                              d.write_descriptor(1, 3 * RAM, 8, table=0x20000)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_rings_raise_virtqueue_error(memory, case):
    driver, queue = make_queue(memory)
    HOSTILE[case](driver)
    with pytest.raises(VirtqueueError):
        for _ in range(2):
            queue.pop(memory)


def test_a_chain_on_slots_still_in_flight_is_refused(memory):
    """A driver that wraps onto slots the device has not given back (ids all distinct)."""
    driver, queue = make_queue(memory, size=4, max_size=4)
    for index in range(4):
        driver.write_descriptor(index, 0x8000, 8, A, buffer_id=index)
    chains = list(queue.iter_available(memory))
    queue.add_used(memory, chains[3].head, 0)  # used at slot 0, and slot 3 is free again
    driver.write_descriptor(1, 0x8000, 8, DESC_F_USED, buffer_id=3)  # slot 1 of the next lap: in flight
    driver.write_descriptor(0, 0x8000, 8, DESC_F_USED | DESC_F_NEXT, buffer_id=3)
    with pytest.raises(VirtqueueError, match="overlaps buffers still in flight"):
        queue.pop(memory)


def test_endless_chain_is_reported_as_such(memory):
    driver, queue = make_queue(memory)
    _endless(driver)
    with pytest.raises(VirtqueueError, match="NEXT set after all 8 slots"):
        queue.pop(memory)


def test_a_descriptor_marked_used_is_not_available(memory):
    """AVAIL and USED both set (a used descriptor of the first lap) is not a new chain."""
    driver, queue = make_queue(memory)
    driver.write_descriptor(0, 0x8000, 8, DESC_F_AVAIL | DESC_F_USED)
    assert queue.pop(memory) is None and queue.pending(memory) == 0
    assert not packed.avail_flags(1) & DESC_F_USED


def test_longest_legal_chain_is_the_whole_ring(memory):
    driver, queue = make_queue(memory)
    head = submit(driver, [Buffer(0x8000 + 16 * i, 16, True) for i in range(8)])
    chain = queue.pop(memory)
    assert chain.head == head and len(chain.descriptors) == 8
    assert (queue.avail_index, queue.avail_wrap) == (0, 0)


def test_event_idx_decision_after_more_than_two_laps_interrupts(memory):
    """Positions repeat every two laps: after that many slots the named one was passed,
    whatever the positions before and after say."""
    driver, queue = make_queue(memory, size=4, max_size=4, event_idx=True)
    use_one(driver, queue, memory)
    queue.needs_notification(memory)
    driver.set_driver_event(EVENT_FLAG_DESC, index=3, wrap=1)
    for _ in range(8):  # slots 1, 2, 3, 0 (wrap 0), 1, 2, 3, 0 (wrap 1): back where it was
        use_one(driver, queue, memory)
        driver.take_used()
    assert queue.needs_notification(memory)


def test_popped_chains_go_back_last_first_and_a_batch_is_handed_over_by_its_first_flags(memory, monkeypatch):
    driver, queue = make_queue(memory)
    heads = [submit(driver, [Buffer(0x8000 + 0x100 * i, 64, True)] * (i + 1)) for i in range(3)]
    chains = [queue.pop(memory) for _ in heads]
    assert [chain.slots for chain in chains] == [1, 2, 3]
    for chain in reversed(chains[1:]):
        queue.unpop(chain)
    assert [queue.pop(memory).head for _ in range(2)] == heads[1:]
    assert queue.pop(memory) is None
    written = []
    write_u16 = memory.write_u16
    monkeypatch.setattr(memory, "write_u16", lambda gpa, value: (written.append(gpa), write_u16(gpa, value)))
    queue.add_used_batch(memory, [(head, 10 + i) for i, head in enumerate(heads)])
    assert written[-1] == driver.desc_ring + 14  # the first used descriptor's flags, last
    assert driver.take_used() == [(heads[0], 10), (heads[1], 11), (heads[2], 12)]

"""Kick suppression while the device drains a ring, and virtio-blk's batched publication."""

from __future__ import annotations

import struct

import pytest

from pyhv.block.backend import open_image
from pyhv.devices.virtio import blk, spec
from pyhv.devices.virtio.blk import VirtioBlock
from pyhv.devices.virtio.mock_driver import Buffer
from pyhv.devices.virtio.queue import USED_F_NO_NOTIFY

SECTOR = 512


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(range(256)) * 256)  # 64 KiB
    return path


def _start(memory, plug, image, drop=0, workers=0):
    device = VirtioBlock(memory, open_image(str(image), "raw"), workers=workers)
    driver, transport, irq = plug(device)
    driver.start(1, drop_features=drop)
    return driver, device, transport


def _read_chain(driver, sector):
    """Header, a 512-byte read and the status byte, linked but not published: the head."""
    header = driver.alloc(16)
    driver.memory.write(header, struct.pack("<IIQ", blk.T_IN, 0, sector))
    data = driver.alloc(SECTOR)
    status = driver.alloc(1, fill=0xFF)
    return driver.queues[0].add_chain([Buffer(header, 16, False), Buffer(data, SECTOR, True),
                                       Buffer(status, 1, True)])


@pytest.mark.parametrize("event_idx", [True, False])
def test_requests_added_during_a_drain_need_no_kick(memory, plug, image, event_idx):
    """The driver publishes a second request while the device processes the first: it
    must see that no kick is needed, and the same notification serves both."""
    drop = 0 if event_idx else spec.bit(spec.F_EVENT_IDX)
    driver, device, transport = _start(memory, plug, image, drop)
    queue = driver.queues[0]
    seen = []
    original = device.backend.readv

    def readv(offset, buffers):
        seen.append(offset)
        if len(seen) == 1:
            queue.publish(_read_chain(driver, 2))
            seen.append(queue.kick_needed(event_idx))
        original(offset, buffers)

    device.backend.readv = readv
    queue.publish(_read_chain(driver, 1))
    assert queue.kick_needed(event_idx)  # the device is idle: the first one is kicked
    driver.kick(0)
    assert seen == [SECTOR, False, 2 * SECTOR]
    assert [length for _head, length in queue.take_used()] == [SECTOR + 1] * 2
    assert transport.notify_writes == 1
    # Idle again: the next request wants a kick, and the flags say so.
    assert memory.read_u16(queue.used_ring) & USED_F_NO_NOTIFY == 0
    if event_idx:
        assert queue.avail_event() == 2
    queue.publish(_read_chain(driver, 3))
    assert queue.kick_needed(event_idx)


def test_drain_sets_no_notify_without_event_idx(memory, plug, image):
    driver, device, _transport = _start(memory, plug, image, drop=spec.bit(spec.F_EVENT_IDX))
    queue = driver.queues[0]
    flags = []
    original = device.backend.readv
    device.backend.readv = lambda offset, buffers: (flags.append(memory.read_u16(queue.used_ring)),
                                                    original(offset, buffers))
    driver.queues[0].publish(_read_chain(driver, 0))
    driver.kick(0)
    assert flags == [USED_F_NO_NOTIFY]
    assert memory.read_u16(queue.used_ring) == 0


def test_avail_event_stays_behind_during_a_drain(memory, plug, image):
    driver, device, _transport = _start(memory, plug, image)
    queue = driver.queues[0]
    events = []
    original = device.backend.readv
    device.backend.readv = lambda offset, buffers: (events.append(queue.avail_event()), original(offset, buffers))
    for sector in range(3):
        queue.publish(_read_chain(driver, sector))
    driver.kick(0)
    assert events == [0, 0, 0]  # nothing asked of the driver while it is drained
    assert queue.avail_event() == 3


def _used_before_each_read(device, queue, transport):
    """Record the used index and interrupt status the driver would see as each request runs."""
    used_seen, status_seen = [], []
    original = device.backend.readv

    def readv(offset, buffers):
        used_seen.append(queue.used_idx())
        status_seen.append(transport.interrupt_status)
        original(offset, buffers)

    device.backend.readv = readv
    return used_seen, status_seen


@pytest.mark.parametrize("count, batch", [
    (2 * blk.PUBLISH_BATCH + 4, blk.PUBLISH_BATCH),  # a deep ring: batches of PUBLISH_BATCH
    (8, 4),  # a shallow one: half of it, so the driver refills while the rest runs
    (1, 1),
])
def test_inline_requests_are_published_in_batches(memory, plug, image, count, batch):
    """Of ``count`` requests in one kick, each batch is in the used ring (with its interrupt)
    before the next runs, and the rest by the end of the pass."""
    driver, device, transport = _start(memory, plug, image)
    queue = driver.queues[0]
    used_seen, status_seen = _used_before_each_read(device, queue, transport)
    for k in range(count):
        queue.publish(_read_chain(driver, 2 * k))  # not adjacent: one backend read each
    driver.kick(0)
    assert used_seen == [i - i % batch for i in range(count)]
    assert status_seen == [0] * batch + [spec.INT_USED_BUFFER] * (count - batch)
    assert queue.used_idx() == count


def test_a_pass_that_takes_nothing_ends(memory, plug, image):
    """Receive-style queues leave their buffers available; the drain loop must not spin."""
    driver, device, _transport = _start(memory, plug, image)
    calls = []
    device.process_queue = lambda index: calls.append(index)
    driver.queues[0].publish(_read_chain(driver, 0))
    driver.kick(0)
    assert calls == [0]

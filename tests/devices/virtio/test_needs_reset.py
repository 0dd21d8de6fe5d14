"""A guest that breaks the rules gets DEVICE_NEEDS_RESET and a config interrupt; the host
goes on, the device stops touching the queue, and a reset brings it back."""

from __future__ import annotations

import logging

import pytest

from pyhv.devices.virtio import mmio, spec
from pyhv.devices.virtio.mock_driver import Buffer
from pyhv.devices.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT
from pyhv.devices.virtio.rng import VirtioRng

RAM = 4 << 20

CASES = {
    "buffer outside RAM": lambda q: q.write_descriptor(0, RAM - 4, 8),
    "oversized length": lambda q: q.write_descriptor(0, 0x200000, 0xFFFF_0000),
    "descriptor loop": lambda q: (q.write_descriptor(0, 0x200000, 8, DESC_F_NEXT, 1),
                                  q.write_descriptor(1, 0x200000, 8, DESC_F_NEXT, 0)),
    "indirect table of 20 bytes": lambda q: q.write_descriptor(0, 0x200000, 20, DESC_F_INDIRECT),
    "nested indirect": lambda q: (q.write_descriptor(0, 0x200000, 16, DESC_F_INDIRECT),
                                  q.write_descriptor(0, 0x210000, 16, DESC_F_INDIRECT, table=0x200000)),
}


def start_rng(memory, plug, queue_size=None):
    driver, transport, irq = plug(VirtioRng(memory))
    driver.start(1, queue_size=queue_size)
    return driver, transport, irq


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_chain_sets_needs_reset(memory, plug, caplog, case):
    driver, transport, irq = start_rng(memory, plug)
    queue = driver.queues[0]
    CASES[case](queue)
    queue.publish(0)
    with caplog.at_level(logging.WARNING, logger="pyhv.virtio"):
        driver.kick(0)
        driver.kick(0)  # a second kick neither logs again nor processes
    assert driver.needs_reset()
    assert driver.interrupt_status() & spec.INT_CONFIG_CHANGE and irq.level
    assert len([r for r in caplog.records if "needs a reset" in r.getMessage()]) == 1
    assert queue.take_used() == []
    # Later good buffers are not processed until the driver resets the device.
    queue.publish(queue.add_chain([Buffer(driver.alloc(8), 8, True)]))
    driver.kick(0)
    assert queue.take_used() == []
    # After a reset and a fresh start, the device works again.
    driver.start(1)
    assert not driver.needs_reset()
    driver.submit(0, [Buffer(driver.alloc(8), 8, True)])
    assert len(driver.queues[0].take_used()) == 1


@pytest.mark.parametrize("size", [3, 100, 128])
def test_bad_queue_size_sets_needs_reset(memory, plug, size):
    driver, transport, _irq = start_rng(memory, plug, queue_size=size)
    assert driver.needs_reset()
    assert not transport.device.active
    driver.kick(0)  # nothing happens, nothing raises


def test_ring_outside_ram_sets_needs_reset(memory, plug):
    driver, transport, _irq = plug(VirtioRng(memory))
    driver.negotiate()
    driver.write32(mmio.QUEUE_SEL, 0)
    driver.write32(mmio.QUEUE_NUM, 64)
    driver.write32(mmio.QUEUE_DESC_LOW, 0x1000)
    driver.write32(mmio.QUEUE_DRIVER_LOW, 0x3000)
    driver.write32(mmio.QUEUE_DEVICE_HIGH, 0x10)  # 64 GiB: far outside 4 MiB of RAM
    driver.write32(mmio.QUEUE_READY, 1)
    driver.write32(mmio.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK
                   | spec.STATUS_DRIVER_OK)
    assert driver.needs_reset()
    assert driver.interrupt_status() & spec.INT_CONFIG_CHANGE


def test_avail_index_jump_sets_needs_reset(memory, plug):
    driver, _transport, _irq = start_rng(memory, plug)
    driver.queues[0].set_avail_idx(1000)
    driver.kick(0)
    assert driver.needs_reset()

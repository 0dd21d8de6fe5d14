"""virtio-mmio v2 register semantics, driven through the transport as a guest would."""

from __future__ import annotations

import pytest

from pyhv.devices.virtio import mmio, spec
from pyhv.devices.virtio.mock_driver import Buffer
from pyhv.devices.virtio.rng import VirtioRng

DRIVER_UP = spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK | spec.STATUS_DRIVER_OK


@pytest.fixture
def rng(memory, plug):
    return plug(VirtioRng(memory))


def test_identity_registers(rng):
    driver, transport, _irq = rng
    assert driver.read32(mmio.MAGIC) == int.from_bytes(b"virt", "little")
    assert driver.read32(mmio.VERSION_REG) == 2
    assert driver.read32(mmio.DEVICE_ID) == spec.ID_ENTROPY
    assert driver.read32(mmio.VENDOR) == mmio.VENDOR_ID
    assert transport.read(mmio.MAGIC, 2) == 0  # registers are 32-bit only


def test_feature_words_through_select(rng):
    driver, transport, _irq = rng
    offered = driver.features()
    assert offered >> spec.F_VERSION_1 & 1
    assert offered >> spec.F_EVENT_IDX & 1
    assert offered == transport.device.avail_features
    driver.write32(mmio.DEVICE_FEATURES_SEL, 2)
    assert driver.read32(mmio.DEVICE_FEATURES) == 0


def test_negotiation_records_both_halves(rng):
    driver, transport, _irq = rng
    accepted = driver.negotiate(drop_features=spec.bit(spec.F_EVENT_IDX))
    assert transport.device.acked_features == accepted
    assert not transport.device.has_feature(spec.F_EVENT_IDX)
    # Once FEATURES_OK is set, feature writes are ignored.
    driver.write32(mmio.DRIVER_FEATURES_SEL, 0)
    driver.write32(mmio.DRIVER_FEATURES, 0)
    assert transport.device.acked_features == accepted


def test_features_ok_refused_without_version_1(rng):
    driver, _transport, _irq = rng
    with pytest.raises(AssertionError, match="refused FEATURES_OK"):
        driver.negotiate(drop_features=spec.bit(spec.F_VERSION_1))
    assert not driver.status() & spec.STATUS_FEATURES_OK


def test_features_ok_refused_for_features_not_offered(rng):
    driver, _transport, _irq = rng
    driver.write32(mmio.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER)
    driver.write32(mmio.DRIVER_FEATURES_SEL, 1)
    driver.write32(mmio.DRIVER_FEATURES, 1 | 1 << 20)  # VERSION_1 and an unknown bit 52
    driver.write32(mmio.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK)
    assert not driver.status() & spec.STATUS_FEATURES_OK


def test_queue_registers_read_back(rng):
    driver, _transport, _irq = rng
    driver.negotiate()
    queue = driver.setup_queue(0, 16)
    assert driver.read32(mmio.QUEUE_NUM_MAX) == 64
    assert driver.read32(mmio.QUEUE_READY) == 1
    assert driver.read32(mmio.QUEUE_DESC_LOW) == queue.desc_table
    assert driver.read32(mmio.QUEUE_DRIVER_LOW) == queue.avail_ring
    assert driver.read32(mmio.QUEUE_DEVICE_LOW) == queue.used_ring
    driver.write32(mmio.QUEUE_SEL, 5)  # no such queue
    assert driver.read32(mmio.QUEUE_NUM_MAX) == 0
    assert driver.read32(mmio.QUEUE_READY) == 0


def test_high_address_halves(rng):
    driver, transport, _irq = rng
    driver.write32(mmio.QUEUE_SEL, 0)
    driver.write32(mmio.QUEUE_DESC_HIGH, 0x1)
    driver.write32(mmio.QUEUE_DESC_LOW, 0x2000)
    assert transport.device.queues[0].desc_table == 0x1_0000_2000
    assert driver.read32(mmio.QUEUE_DESC_HIGH) == 1


def test_status_zero_resets_device_and_queues(rng):
    driver, transport, irq = rng
    driver.start(1)
    driver.submit(0, [Buffer(driver.alloc(8), 8, True)])
    assert irq.level
    driver.write32(mmio.STATUS, 0)
    device = transport.device
    assert driver.status() == 0
    assert device.acked_features == 0 and not device.active
    assert not device.queues[0].ready and device.queues[0].next_avail == 0
    assert driver.read32(mmio.QUEUE_READY) == 0
    assert driver.interrupt_status() == 0 and not irq.level


def test_interrupt_status_and_ack(rng):
    driver, _transport, irq = rng
    driver.start(1)
    assert not irq.level
    driver.submit(0, [Buffer(driver.alloc(8), 8, True)])
    assert driver.interrupt_status() == spec.INT_USED_BUFFER
    assert irq.level
    driver.write32(mmio.INTERRUPT_ACK, spec.INT_CONFIG_CHANGE)  # the wrong bit leaves it up
    assert irq.level
    assert driver.ack_interrupts() == spec.INT_USED_BUFFER
    assert driver.interrupt_status() == 0 and not irq.level


def test_queue_setup_frozen_while_ready(rng):
    driver, transport, _irq = rng
    driver.negotiate()
    driver.setup_queue(0, 16)
    driver.write32(mmio.QUEUE_NUM, 8)
    driver.write32(mmio.QUEUE_DESC_LOW, 0x5000)
    queue = transport.device.queues[0]
    assert queue.size == 16 and queue.desc_table != 0x5000


def test_notify_before_driver_ok_is_ignored(rng):
    driver, _transport, irq = rng
    driver.negotiate()
    queue = driver.setup_queue(0)
    queue.publish(queue.add_chain([Buffer(driver.alloc(8), 8, True)]))
    driver.kick(0)
    assert queue.take_used() == [] and not irq.level


def test_shared_memory_absent_and_config_generation(rng):
    driver, transport, _irq = rng
    driver.write32(mmio.SHM_SEL, 0)
    assert driver.read32(mmio.SHM_LEN_LOW) == 0xFFFF_FFFF
    assert driver.read32(mmio.SHM_LEN_HIGH) == 0xFFFF_FFFF
    before = driver.read32(mmio.CONFIG_GENERATION)
    transport.device.config_changed()
    assert driver.read32(mmio.CONFIG_GENERATION) == before + 1
    assert driver.interrupt_status() == spec.INT_CONFIG_CHANGE


def test_driver_ok_without_features_ok_does_not_activate(rng):
    driver, transport, _irq = rng
    driver.write32(mmio.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_DRIVER_OK)
    assert not transport.device.active

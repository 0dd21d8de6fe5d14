"""The virtio-pci modern transport, driven the way Linux's virtio_pci_modern drives it:
capabilities, feature negotiation and queue set-up through the common config, kicks through
the notify area, interrupts through MSI-X or INTx and the ISR."""

from __future__ import annotations

import pytest

from pyhv.bus import Bus
from pyhv.devices.pci import config as cfg
from pyhv.devices.pci.builder import PciBuilder
from pyhv.devices.pci.mock_driver import MockVirtioPciDriver
from pyhv.devices.pci.msix import NO_VECTOR
from pyhv.devices.pci.sinks import RecordingMsiSink
from pyhv.devices.virtio import pci as vpci
from pyhv.devices.virtio import spec
from pyhv.devices.virtio.mock_driver import Buffer
from pyhv.devices.virtio.rng import VirtioRng
from pyhv.irq import RecordingIrqLine


class Rig:
    def __init__(self, memory, device_factory=VirtioRng):
        self.pio, self.mmio = Bus("pio"), Bus("mmio")
        self.memory = memory
        self.sink = RecordingMsiSink()
        self.lines = {}
        self.builder = PciBuilder(self.pio, self.mmio, memory, self.irq_line, self.sink)
        self.device = device_factory(memory)
        self.placed = self.builder.add_virtio(self.device, "test")
        self.function = self.placed.function
        self.driver = MockVirtioPciDriver(self.pio, self.mmio, memory, self.placed.slot)

    def irq_line(self, gsi):
        return self.lines.setdefault(gsi, RecordingIrqLine())

    @property
    def intx(self):
        return self.lines[self.placed.gsi]

    def enable_msix(self, vectors):
        for vector in range(vectors):
            self.driver.program_vector(vector, 0xFEE0_0000, 0x40 + vector)
        self.driver.set_msix(True)


@pytest.fixture
def rig(memory):
    return Rig(memory)


def test_identity_and_capabilities(rig):
    conf, slot = rig.driver.config, rig.placed.slot
    assert conf.read(slot, cfg.VENDOR_ID, 2) == 0x1AF4
    assert conf.read(slot, cfg.DEVICE_ID, 2) == 0x1040 + spec.ID_ENTROPY
    assert conf.read(slot, cfg.REVISION_ID, 1) == 1
    assert conf.read(slot, cfg.SUBSYSTEM_ID, 2) == vpci.SUBSYSTEM_ID
    cap_types = {}
    for offset, cap_id in conf.capabilities(slot):
        if cap_id == vpci.CAP_ID_VENDOR:
            cap_types[conf.read(slot, offset + 3, 1)] = (conf.read(slot, offset + 4, 1), conf.read(slot, offset + 2, 1))
    assert cap_types == {vpci.CAP_COMMON_CFG: (4, 16), vpci.CAP_ISR_CFG: (4, 16), vpci.CAP_DEVICE_CFG: (4, 16),
                         vpci.CAP_NOTIFY_CFG: (4, 20), vpci.CAP_PCI_CFG: (0, 20)}
    assert rig.driver.notify_multiplier == vpci.NOTIFY_OFF_MULTIPLIER
    assert conf.read(slot, cfg.INTERRUPT_PIN, 1) == cfg.PIN_INTA
    assert conf.read(slot, cfg.INTERRUPT_LINE, 1) == rig.placed.gsi


def test_feature_negotiation(rig):
    features = rig.driver.features()
    assert features & spec.bit(spec.F_VERSION_1)
    accepted = rig.driver.negotiate()
    assert accepted == features
    rig.driver.common_write(vpci.DRIVER_FEATURE_SELECT, 4, 1)
    assert rig.driver.common_read(vpci.DRIVER_FEATURE, 4) == features >> 32
    with pytest.raises(AssertionError, match="refused FEATURES_OK"):
        rig.driver.negotiate(drop_features=spec.bit(spec.F_VERSION_1))


def test_queue_setup_through_common_config(rig):
    driver = rig.driver
    driver.negotiate()
    assert driver.common_read(vpci.NUM_QUEUES, 2) == 1
    queue = driver.setup_queue(0, size=16)
    device_queue = rig.device.queues[0]
    assert (device_queue.size, device_queue.desc_table, device_queue.avail_ring, device_queue.used_ring) == \
        (16, queue.desc_table, queue.avail_ring, queue.used_ring)
    assert driver.common_read(vpci.QUEUE_DESC, 4) == queue.desc_table
    assert driver.common_read(vpci.QUEUE_ENABLE, 2) == 1
    assert driver.common_read(vpci.QUEUE_NOTIFY_OFF, 2) == 0
    driver.common_write(vpci.QUEUE_SIZE, 2, 8)  # frozen once enabled
    assert device_queue.size == 16
    driver.common_write(vpci.QUEUE_SELECT, 2, 5)  # no such queue
    assert driver.common_read(vpci.QUEUE_SIZE, 2) == 0
    driver.common_write(vpci.QUEUE_SIZE, 2, 8)
    assert device_queue.size == 16


def test_kick_processes_queue_and_sends_the_queue_vector(rig):
    driver = rig.driver
    rig.enable_msix(2)
    driver.negotiate()
    driver.common_write(vpci.CONFIG_MSIX_VECTOR, 2, 0)
    assert driver.common_read(vpci.CONFIG_MSIX_VECTOR, 2) == 0
    driver.setup_queue(0, size=8, vector=1)
    driver.set_status(spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK
                      | spec.STATUS_DRIVER_OK)
    buf = driver.alloc(64)
    head = driver.submit(0, [Buffer(buf, 64, True)])
    assert driver.queues[0].take_used() == [(head, 64)]
    assert rig.sink.messages == [(0xFEE0_0000, 0x41)]
    assert True not in rig.intx.history  # nothing on INTx while MSI-X is on


def test_intx_and_isr_when_msix_is_off(rig):
    driver = rig.driver
    driver.start(1)
    driver.submit(0, [Buffer(driver.alloc(16), 16, True)])
    assert rig.intx.level is True
    assert driver.config.read(rig.placed.slot, cfg.STATUS, 2) & cfg.STATUS_INTERRUPT
    assert driver.read_isr() == spec.INT_USED_BUFFER
    assert rig.intx.level is False
    assert driver.read_isr() == 0
    assert rig.sink.messages == []


def test_config_change_interrupt_uses_config_vector(rig):
    rig.enable_msix(2)
    rig.driver.start(1)
    rig.driver.common_write(vpci.CONFIG_MSIX_VECTOR, 2, 0)
    rig.device.config_changed()
    assert rig.sink.messages == [(0xFEE0_0000, 0x40)]
    assert rig.driver.read_isr() == spec.INT_CONFIG_CHANGE


def test_vector_out_of_range_reads_back_no_vector(rig):
    rig.driver.common_write(vpci.CONFIG_MSIX_VECTOR, 2, 7)  # the table has 2 vectors
    assert rig.driver.common_read(vpci.CONFIG_MSIX_VECTOR, 2) == NO_VECTOR
    rig.driver.common_write(vpci.QUEUE_SELECT, 2, 0)
    rig.driver.common_write(vpci.QUEUE_MSIX_VECTOR, 2, 2)
    assert rig.driver.common_read(vpci.QUEUE_MSIX_VECTOR, 2) == NO_VECTOR


def test_no_vector_means_no_interrupt(rig):
    rig.enable_msix(2)
    rig.driver.start(1)  # the queue keeps NO_VECTOR
    rig.driver.submit(0, [Buffer(rig.driver.alloc(16), 16, True)])
    assert rig.sink.messages == [] and True not in rig.intx.history


def test_reset_clears_vectors_and_isr(rig):
    rig.driver.start(1, vectors=[1])
    rig.driver.common_write(vpci.CONFIG_MSIX_VECTOR, 2, 0)
    rig.driver.submit(0, [Buffer(rig.driver.alloc(16), 16, True)])
    rig.driver.set_status(0)
    assert rig.driver.status() == 0
    assert rig.driver.common_read(vpci.CONFIG_MSIX_VECTOR, 2) == NO_VECTOR
    assert rig.function.queue_vectors == [NO_VECTOR]
    assert rig.intx.level is False and rig.function.isr == 0
    assert rig.device.queues[0].ready is False


def test_pci_cfg_window_reaches_the_bar(rig):
    conf, slot = rig.driver.config, rig.placed.slot
    base = rig.function.pci_cfg_offset
    conf.write(slot, base + 4, 1, vpci.MODERN_BAR)
    conf.write(slot, base + 8, 4, vpci.COMMON_OFFSET + vpci.NUM_QUEUES)
    conf.write(slot, base + 12, 4, 2)
    assert conf.read(slot, base + 16, 2) == 1
    conf.write(slot, base + 8, 4, vpci.COMMON_OFFSET + vpci.DEVICE_STATUS)
    conf.write(slot, base + 12, 4, 1)
    conf.write(slot, base + 16, 1, spec.STATUS_ACKNOWLEDGE)
    assert rig.device.status == spec.STATUS_ACKNOWLEDGE
    conf.write(slot, base + 8, 4, 0x10_0000)  # past the BAR: nothing happens
    conf.write(slot, base + 16, 1, 0)
    assert rig.device.status == spec.STATUS_ACKNOWLEDGE


def test_odd_sized_and_unknown_register_accesses_are_harmless(rig):
    driver = rig.driver
    driver.common_write(vpci.DEVICE_STATUS, 4, 0xFF)  # status is a byte register
    assert rig.device.status == 0
    driver.common_write(0x800, 4, 1)
    assert driver.common_read(0x800, 4) == 0
    notify = driver.regions[vpci.CAP_NOTIFY_CFG]
    rig.mmio.write(notify + 4 * 40, 2, 40)  # kick of a queue that does not exist
    assert rig.mmio.read(notify, 4) == 0


def test_guest_moving_the_modern_bar(rig):
    conf, slot = rig.driver.config, rig.placed.slot
    conf.write(slot, cfg.BAR0 + 16, 4, 0xE800_000C)
    conf.write(slot, cfg.BAR0 + 20, 4, 0)
    driver = MockVirtioPciDriver(rig.pio, rig.mmio, rig.memory, slot)
    assert driver.regions[vpci.CAP_COMMON_CFG] == 0xE800_0000
    assert driver.common_read(vpci.NUM_QUEUES, 2) == 1

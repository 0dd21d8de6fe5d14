"""virtio-blk served by the I/O thread: kick -> completion -> interrupt, doorbells as an
accelerator would bind them, reset while a request is in flight, and the PCI notify area's
doorbells following the BAR."""

from __future__ import annotations

import os
import struct
import threading

import pytest

from pyhv.block.backend import open_image
from pyhv.bus import Bus
from pyhv.devices.pci import config as cfg
from pyhv.devices.pci.builder import PciBuilder
from pyhv.devices.pci.mock_driver import MockVirtioPciDriver
from pyhv.devices.pci.sinks import RecordingMsiSink
from pyhv.devices.virtio import blk, mmio, spec
from pyhv.devices.virtio import pci as vpci
from pyhv.devices.virtio.blk import VirtioBlock
from pyhv.devices.virtio.iothread import EventFd, IoThread, IoThreadError
from pyhv.devices.virtio.mock_driver import Buffer
from pyhv.irq import RecordingIrqLine

WAIT_S = 10  # generous: only a broken I/O thread ever waits this long
SECTOR = 512
DISK = bytes(range(256)) * 64  # 16 KiB, 32 sectors


class EventIrqLine(RecordingIrqLine):
    """Records levels and sets ``raised`` on every rising level (from any thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.raised = threading.Event()

    def set_level(self, level: bool) -> None:
        super().set_level(level)
        if level:
            self.raised.set()


class FakeDoorbells:
    """Plays the accelerator: remembers bindings; ``ring(addr, value)`` is a guest write."""

    def __init__(self) -> None:
        self.bound = {}  # (addr, length, datamatch) -> eventfd

    def __call__(self, addr, length, datamatch, fd):
        key = (addr, length, datamatch)
        if key in self.bound:
            return None  # as KVM refuses a second identical ioeventfd (EEXIST)
        self.bound[key] = fd

        def undo():
            del self.bound[key]

        return undo

    def ring(self, addr, length, value) -> bool:
        for (bound_addr, bound_length, datamatch), fd in self.bound.items():
            if bound_addr == addr and bound_length == length and datamatch in (None, value):
                os.write(fd, (1).to_bytes(8, "little"))
                return True
        return False


class GatedBackend:
    """Wraps a backend; reads wait at a gate the test opens, so a request stays in flight."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def readv(self, offset, buffers):
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise AssertionError("the test never opened the gate")
        self._backend.readv(offset, buffers)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(DISK)
    return path


@pytest.fixture
def iothread():
    thread = IoThread("test-iothread")
    thread.start()
    yield thread
    thread.close()


def read_request(driver, sector, count=1):
    """Queue (not kick) a read; (head, data gpa, status gpa)."""
    header = driver.alloc(16)
    driver.memory.write(header, struct.pack("<IIQ", blk.T_IN, 0, sector))
    data = driver.alloc(count * SECTOR)
    status = driver.alloc(1, fill=0xFF)
    queue = driver.queues[0]
    head = queue.add_chain([Buffer(header, 16, False), Buffer(data, count * SECTOR, True), Buffer(status, 1, True)])
    queue.publish(head)
    return head, data, status


def wait_used(queue, count):
    done = threading.Event()
    for _ in range(WAIT_S * 1000):
        if queue.used_idx() == count:
            return queue.take_used()
        done.wait(0.001)
    raise AssertionError(f"used index stayed at {queue.used_idx()}, expected {count}")


def mmio_rig(memory, backend, iothread, doorbell=None, base=None):
    device = VirtioBlock(memory, backend)
    irq = EventIrqLine()
    transport = mmio.VirtioMmioTransport(device, irq)
    from pyhv.devices.virtio.mock_driver import MockMmioDriver

    driver = MockMmioDriver(transport, memory)
    bound = transport.use_iothread(iothread, doorbell, base)
    driver.start(1)
    return driver, transport, irq, bound


# --- the thread itself ------------------------------------------------------------------------------

def test_eventfd_counts_signals():
    event = EventFd()
    try:
        assert event.drain() == 0
        event.signal()
        event.signal()
        assert event.drain() == 2
        assert event.drain() == 0
    finally:
        event.close()


def test_iothread_calls_the_handler_of_the_signalled_queue(iothread):
    calls = {"a": threading.Event(), "b": threading.Event()}
    event_a = iothread.add_queue("a", calls["a"].set)
    iothread.add_queue("b", calls["b"].set)
    event_a.signal()
    assert calls["a"].wait(WAIT_S)
    assert not calls["b"].is_set()
    assert iothread.batches == 1


def test_iothread_survives_a_failing_handler(iothread):
    served = threading.Event()

    def broken():
        raise RuntimeError("device bug")

    iothread.add_queue("broken", broken).signal()
    iothread.add_queue("fine", served.set).signal()
    assert served.wait(WAIT_S)
    for _ in range(WAIT_S * 100):
        if iothread.failures:
            break
        served.wait(0.01)
    assert iothread.failures == 1 and iothread.running


def test_removing_an_unknown_queue_is_an_error(iothread):
    stranger = EventFd()
    try:
        with pytest.raises(IoThreadError, match=f"eventfd {stranger.fd} serves no queue"):
            iothread.remove_queue(stranger)
    finally:
        stranger.close()


def test_a_removed_queue_is_no_longer_served(iothread):
    served = threading.Event()
    event = iothread.add_queue("gone", served.set)
    iothread.remove_queue(event)
    assert event.fd == -1  # closed: nobody can kick it any more
    assert iothread.queue_names == []


# --- virtio-mmio ----------------------------------------------------------------------------------

def test_kick_is_served_on_the_iothread_with_an_interrupt(memory, image, iothread):
    driver, transport, irq, bound = mmio_rig(memory, open_image(str(image), "raw"), iothread)
    assert bound == 0  # no doorbell: the transport signals the eventfd itself
    handler_threads = []
    original = transport.device.process_queue
    transport.device.process_queue = lambda index: (handler_threads.append(threading.current_thread()),
                                                    original(index))
    head, data, status = read_request(driver, sector=3, count=2)
    driver.kick(0)
    assert irq.raised.wait(WAIT_S)
    assert wait_used(driver.queues[0], 1) == [(head, 2 * SECTOR + 1)]
    assert memory.read(data, 2 * SECTOR) == DISK[3 * SECTOR:5 * SECTOR]
    assert memory.read_u8(status) == blk.S_OK
    assert handler_threads == [iothread._thread]
    assert driver.ack_interrupts() == spec.INT_USED_BUFFER and irq.level is False
    assert transport.notify_writes == 1


def test_doorbell_takes_the_notify_off_the_register(memory, image, iothread):
    doorbells = FakeDoorbells()
    base = 0xD000_0000
    driver, transport, irq, bound = mmio_rig(memory, open_image(str(image), "raw"), iothread, doorbells, base)
    assert bound == 1
    assert list(doorbells.bound) == [(base + mmio.QUEUE_NOTIFY, 4, 0)]
    head, data, _status = read_request(driver, sector=7)
    assert not doorbells.ring(base + mmio.QUEUE_NOTIFY, 4, 1)  # another queue's index: no match
    assert doorbells.ring(base + mmio.QUEUE_NOTIFY, 4, 0)  # what KVM does for the guest's write
    assert irq.raised.wait(WAIT_S)
    assert wait_used(driver.queues[0], 1) == [(head, SECTOR + 1)]
    assert memory.read(data, SECTOR) == DISK[7 * SECTOR:8 * SECTOR]
    assert transport.notify_writes == 0
    transport.leave_iothread()
    assert doorbells.bound == {}
    head, _data, _status = read_request(driver, sector=1)
    driver.kick(0)  # back to the synchronous path: done when the write returns
    assert driver.queues[0].take_used() == [(head, SECTOR + 1)]


def test_many_kicks_all_complete_in_order(memory, image, iothread):
    driver, _transport, _irq, _bound = mmio_rig(memory, open_image(str(image), "raw"), iothread)
    heads = []
    for sector in range(20):
        head, _data, _status = read_request(driver, sector)
        heads.append(head)
        driver.kick(0)
    assert [h for h, _ in wait_used(driver.queues[0], 20)] == heads


def test_reset_waits_for_the_request_in_flight(memory, image, iothread):
    backend = GatedBackend(open_image(str(image), "raw"))
    driver, transport, irq, _bound = mmio_rig(memory, backend, iothread)
    head, data, status = read_request(driver, sector=2)
    driver.kick(0)
    assert backend.entered.wait(WAIT_S)
    # The vCPU thread still reaches the registers while the disk is busy.
    assert driver.read32(mmio.MAGIC) == mmio.MAGIC_VALUE
    assert transport.read(mmio.CONFIG_OFFSET, 8) == len(DISK) // SECTOR
    resetter = threading.Thread(target=driver.write32, args=(mmio.STATUS, 0))
    resetter.start()
    resetter.join(0.2)
    assert resetter.is_alive(), "the reset did not wait for the request in flight"
    # Not through the register: the resetting vCPU holds the transport until it is done.
    assert transport.device.status & spec.STATUS_DRIVER_OK
    backend.gate.set()
    resetter.join(WAIT_S)
    assert not resetter.is_alive()
    assert driver.status() == 0
    # The request finished before the reset took the queue away.
    assert driver.queues[0].used_idx() == 1
    assert memory.read(data, SECTOR) == DISK[2 * SECTOR:3 * SECTOR] and memory.read_u8(status) == blk.S_OK
    # A kick after the reset finds an inactive device and touches nothing.
    read_request(driver, sector=4)
    driver.kick(0)
    driver.start(1)  # the driver sets the device up again (new rings)
    head, data, _status = read_request(driver, sector=5)
    driver.kick(0)
    assert wait_used(driver.queues[0], 1) == [(head, SECTOR + 1)]
    assert memory.read(data, SECTOR) == DISK[5 * SECTOR:6 * SECTOR]


def test_a_broken_queue_on_the_iothread_needs_reset(memory, image, iothread):
    driver, _transport, irq, _bound = mmio_rig(memory, open_image(str(image), "raw"), iothread)
    queue = driver.queues[0]
    queue.write_descriptor(0, 0x7FFF_0000, 16)  # outside the 4 MiB of RAM
    queue.publish(0)
    driver.kick(0)
    assert irq.raised.wait(WAIT_S)
    assert driver.needs_reset()
    assert driver.interrupt_status() & spec.INT_CONFIG_CHANGE


# --- virtio-pci ---------------------------------------------------------------------------------------

class PciRig:
    def __init__(self, memory, backend, iothread, doorbells):
        self.pio, self.mmio = Bus("pio"), Bus("mmio")
        self.sink = RecordingMsiSink()
        self.builder = PciBuilder(self.pio, self.mmio, memory, lambda gsi: RecordingIrqLine(), self.sink)
        self.placed = self.builder.add_virtio(VirtioBlock(memory, backend), "virtio-blk-pci")
        self.function = self.placed.function
        self.function.use_iothread(iothread, doorbells)
        self.driver = MockVirtioPciDriver(self.pio, self.mmio, memory, self.placed.slot)

    def bar_base(self):
        return self.driver.config.bar_address(self.placed.slot, vpci.MODERN_BAR)

    def notify_address(self, index):
        return self.bar_base() + vpci.NOTIFY_OFFSET + vpci.NOTIFY_OFF_MULTIPLIER * index


def test_pci_doorbells_follow_the_bar(memory, image, iothread):
    doorbells = FakeDoorbells()
    rig = PciRig(memory, open_image(str(image), "raw"), iothread, doorbells)
    assert list(doorbells.bound) == [(rig.notify_address(0), vpci.NOTIFY_WIDTH, None)]
    conf, slot = rig.driver.config, rig.placed.slot
    command = conf.read(slot, cfg.COMMAND, 2)
    conf.write(slot, cfg.COMMAND, 2, command & ~cfg.COMMAND_MEMORY)
    assert doorbells.bound == {} and rig.function.doorbell_base is None
    moved = rig.bar_base() + 0x10_0000
    conf.write(slot, cfg.BAR0 + 4 * vpci.MODERN_BAR, 4, moved & 0xFFFF_FFFF)
    conf.write(slot, cfg.COMMAND, 2, command)
    assert rig.bar_base() == moved
    assert list(doorbells.bound) == [(moved + vpci.NOTIFY_OFFSET, vpci.NOTIFY_WIDTH, None)]
    assert rig.function.doorbell_base == moved


def test_pci_kick_through_the_doorbell_completes_with_msix(memory, image, iothread):
    doorbells = FakeDoorbells()
    rig = PciRig(memory, open_image(str(image), "raw"), iothread, doorbells)
    driver = rig.driver
    driver.program_vector(0, 0xFEE0_0000, 0x30)
    driver.program_vector(1, 0xFEE0_0000, 0x31)
    driver.set_msix(True)
    driver.start(1, vectors=[1])
    head, data, _status = read_request(driver, sector=9)
    assert doorbells.ring(rig.notify_address(0), vpci.NOTIFY_WIDTH, 0)
    assert rig.sink.event.wait(WAIT_S)
    assert wait_used(driver.queues[0], 1) == [(head, SECTOR + 1)]
    assert rig.sink.messages == [(0xFEE0_0000, 0x31)]
    assert memory.read(data, SECTOR) == DISK[9 * SECTOR:10 * SECTOR]
    assert rig.function.notify_writes == 0
    # A kick that reaches the BAR (no doorbell there) is served on the I/O thread as well.
    rig.sink.event.clear()
    driver.queues[0].set_used_event(1)  # EVENT_IDX: "interrupt me after used entry 1"
    head, _data, _status = read_request(driver, sector=10)
    driver.kick(0)
    assert rig.sink.event.wait(WAIT_S)
    assert wait_used(driver.queues[0], 2) == [(head, SECTOR + 1)]
    assert rig.function.notify_writes == 1

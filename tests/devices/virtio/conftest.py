"""Fixtures for the virtio tests: guest RAM, a device behind the MMIO transport or behind
either transport (``plug_on``, with ``transport_kind`` running a test over both), and a
virtio-net card on virtio-pci driven by the mock driver."""

from __future__ import annotations

import time

import pytest

from pyhv.bus import Bus
from pyhv.devices.pci.builder import PciBuilder
from pyhv.devices.pci.mock_driver import MockVirtioPciDriver
from pyhv.devices.pci.sinks import RecordingMsiSink
from pyhv.devices.virtio import mmio, spec
from pyhv.devices.virtio import pci as vpci
from pyhv.devices.virtio.mmio import VirtioMmioTransport
from pyhv.devices.virtio.mock_driver import MockMmioDriver
from pyhv.devices.virtio.net import VirtioNet
from pyhv.irq import RecordingIrqLine
from pyhv.memory import GuestMemory, MiB

RUNNING = spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK | spec.STATUS_DRIVER_OK


@pytest.fixture
def memory():
    mem = GuestMemory(4 * MiB)
    yield mem
    mem.close()


@pytest.fixture
def plug(memory):
    """``plug(device)`` -> (driver, transport, irq line) for a device on ``memory``."""

    def make(device):
        irq = RecordingIrqLine()
        transport = VirtioMmioTransport(device, irq)
        return MockMmioDriver(transport, memory), transport, irq

    return make


class Plugged:
    """A device behind the virtio-mmio or the virtio-pci transport (INTx, no MSI-X), with
    that transport's mock driver and the few things the tests need from either."""

    def __init__(self, memory, device, transport: str) -> None:
        self.device = device
        self.memory = memory
        self.transport = transport
        if transport == "mmio":
            self.irq = RecordingIrqLine()
            self.mmio_transport = VirtioMmioTransport(device, self.irq)
            self.driver = MockMmioDriver(self.mmio_transport, memory)
        else:
            pio, bus = Bus("pio"), Bus("mmio")
            self.builder = PciBuilder(pio, bus, memory, lambda gsi: RecordingIrqLine(), RecordingMsiSink())
            placed = self.builder.add_virtio(device, "test")
            self.driver = MockVirtioPciDriver(pio, bus, memory, placed.slot)

    def set_status(self, value: int) -> None:
        if self.transport == "mmio":
            self.driver.write32(mmio.STATUS, value)
        else:
            self.driver.set_status(value)

    def start(self, queue_count: int, drop: int = 0, size=None) -> int:
        accepted = self.driver.negotiate(drop)
        for index in range(queue_count):
            self.driver.setup_queue(index, size)
        self.driver_ok()
        return accepted

    def driver_ok(self) -> None:
        self.set_status(RUNNING)

    def program_queue(self, index: int, size: int, addresses) -> None:
        """Queue set-up register by register, addresses as given (misplaced ones included)."""
        if self.transport == "mmio":
            self.driver.write32(mmio.QUEUE_SEL, index)
            self.driver.write32(mmio.QUEUE_NUM, size)
            for low, address in zip((mmio.QUEUE_DESC_LOW, mmio.QUEUE_DRIVER_LOW, mmio.QUEUE_DEVICE_LOW), addresses):
                self.driver.write32(low, address & 0xFFFF_FFFF)
                self.driver.write32(low + 4, address >> 32)
            self.driver.write32(mmio.QUEUE_READY, 1)
        else:
            self.driver.common_write(vpci.QUEUE_SELECT, 2, index)
            self.driver.common_write(vpci.QUEUE_SIZE, 2, size)
            for offset, address in zip((vpci.QUEUE_DESC, vpci.QUEUE_DRIVER, vpci.QUEUE_DEVICE), addresses):
                self.driver.common_write(offset, 4, address & 0xFFFF_FFFF)
                self.driver.common_write(offset + 4, 4, address >> 32)
            self.driver.common_write(vpci.QUEUE_ENABLE, 2, 1)

    def needs_reset(self) -> bool:
        return bool(self.driver.status() & spec.STATUS_DEVICE_NEEDS_RESET)

    def take_interrupt(self) -> int:
        """The interrupt causes pending (and acknowledged) at the transport."""
        if self.transport == "mmio":
            return self.driver.ack_interrupts()
        return self.driver.read_isr()



@pytest.fixture(params=["mmio", "pci"])
def transport_kind(request):
    """Run the test once behind virtio-mmio and once behind virtio-pci."""
    return request.param


@pytest.fixture
def plug_on(memory):
    """``plug_on(device, kind)`` -> :class:`Plugged`, closing the device afterwards."""
    plugged = []

    def make(device, kind):
        plugged.append(Plugged(memory, device, kind))
        return plugged[-1]

    yield make
    for rig in plugged:
        rig.device.close()
def wait_for(predicate, what, deadline=10.0):
    """Poll for something a back-end thread does; a deadline, not a timing measurement."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


class NetRig:
    """A virtio-net-pci card on ``backend``, its driver past DRIVER_OK with MSI-X vectors 1
    (receive) and 2 (transmit), and the back-end's reader thread running."""

    wait_for = staticmethod(wait_for)

    def __init__(self, memory, backend, drop_features=0):
        self.pio, self.mmio = Bus("pio"), Bus("mmio")
        self.sink = RecordingMsiSink()
        self.builder = PciBuilder(self.pio, self.mmio, memory, lambda gsi: RecordingIrqLine(), self.sink)
        self.device = VirtioNet(memory, backend, bytes.fromhex("525400abcdef"))
        self.placed = self.builder.add_virtio(self.device, "virtio-net-pci")
        self.driver = MockVirtioPciDriver(self.pio, self.mmio, memory, self.placed.slot)
        for vector in range(3):
            self.driver.program_vector(vector, 0xFEE0_0000, 0x60 + vector)
        self.driver.set_msix(True)
        self.accepted = self.driver.start(2, drop_features, vectors=[1, 2])
        self.device.start_backend()

    def close(self):
        self.builder.close()


@pytest.fixture
def net_rig(memory):
    """``net_rig(backend, drop_features=0)`` -> a :class:`NetRig`, closed after the test."""
    rigs = []

    def make(backend, drop_features=0):
        rigs.append(NetRig(memory, backend, drop_features))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()

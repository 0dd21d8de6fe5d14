"""Fixtures for the virtio tests: guest RAM, a device behind the MMIO transport, and a
virtio-net card on virtio-pci driven by the mock driver."""

from __future__ import annotations

import time

import pytest

from pyhv.bus import Bus
from pyhv.devices.pci.builder import PciBuilder
from pyhv.devices.pci.mock_driver import MockVirtioPciDriver
from pyhv.devices.pci.sinks import RecordingMsiSink
from pyhv.devices.virtio.mmio import VirtioMmioTransport
from pyhv.devices.virtio.mock_driver import MockMmioDriver
from pyhv.devices.virtio.net import VirtioNet
from pyhv.irq import RecordingIrqLine
from pyhv.memory import GuestMemory, MiB


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

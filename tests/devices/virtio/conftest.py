"""Fixtures for the virtio tests: guest RAM and a device behind the MMIO transport."""

from __future__ import annotations

import pytest

from pyhv.devices.virtio.mmio import VirtioMmioTransport
from pyhv.devices.virtio.mock_driver import MockMmioDriver
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

"""Fixtures for the PCI tests: buses, guest RAM, IRQ lines and an MSI sink."""

from __future__ import annotations

import pytest

from pyhv.bus import Bus
from pyhv.devices.pci.sinks import RecordingMsiSink
from pyhv.irq import RecordingIrqLine
from pyhv.memory import GuestMemory, MiB


class Machine:
    """The parts a PCI device needs, recorded for assertions."""

    def __init__(self) -> None:
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.memory = GuestMemory(8 * MiB)
        self.lines = {}
        self.sink = RecordingMsiSink()

    def irq_line(self, gsi: int) -> RecordingIrqLine:
        return self.lines.setdefault(gsi, RecordingIrqLine())


@pytest.fixture
def machine():
    m = Machine()
    yield m
    m.memory.close()

"""The PIO/MMIO bus: sorted non-overlapping ranges, offsets to devices, all-ones when unclaimed."""

import pytest

from pyhv.bus import Bus
from pyhv.errors import BusError


class Recorder:
    def __init__(self):
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return 0x100 + offset

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


def test_dispatch_by_offset():
    bus, a, b = Bus("pio"), Recorder(), Recorder()
    bus.attach(0x3F8, 8, a)
    bus.attach(0x60, 1, b)
    assert bus.read(0x3FD, 1) == 0x105
    bus.write(0x60, 1, 0xAA)
    assert a.log == [("r", 5, 1)] and b.log == [("w", 0, 1, 0xAA)]


@pytest.mark.parametrize("size,value", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFF_FFFF), (8, (1 << 64) - 1)])
def test_unclaimed_reads_all_ones_and_writes_are_counted(size, value):
    bus = Bus("mmio")
    bus.attach(0x1000, 0x10, Recorder())
    assert bus.read(0x1010, size) == value
    bus.write(0x0FFF, size, 0)
    assert (bus.unclaimed_reads, bus.unclaimed_writes) == (1, 1)


@pytest.mark.parametrize("base,length", [(0x3F8, 1), (0x3F0, 9), (0x3FF, 4), (0x3F0, 0x100)])
def test_overlaps_are_refused(base, length):
    bus = Bus("pio")
    bus.attach(0x3F8, 8, Recorder())
    with pytest.raises(BusError, match="overlaps Recorder at 0x3f8-0x3ff"):
        bus.attach(base, length, Recorder())


def test_adjacent_ranges_and_detach():
    bus, a, b = Bus("pio"), Recorder(), Recorder()
    bus.attach(0x10, 0x10, a)
    bus.attach(0x20, 0x10, b)
    bus.attach(0x00, 0x10, Recorder())
    assert [entry[0] for entry in bus.devices()] == [0x00, 0x10, 0x20]
    bus.detach(0x10)
    assert bus.find(0x15) is None
    with pytest.raises(BusError, match="nothing attached"):
        bus.detach(0x10)


@pytest.mark.parametrize("base,length", [(0x10, 0), (-1, 4)])
def test_bad_ranges(base, length):
    with pytest.raises(BusError, match="bad range"):
        Bus("pio").attach(base, length, Recorder())

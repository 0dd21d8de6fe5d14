"""Config space semantics: BAR sizing and decoding, relocation, capabilities, INTx, hostile writes."""

from __future__ import annotations

import pytest

from pyhv.devices.pci import config as cfg
from pyhv.devices.pci.allocator import BarAllocator
from pyhv.devices.pci.config import Bar, BarKind, PciError, PciFunction
from pyhv.devices.pci.host import PciHost
from pyhv.devices.pci.mock_driver import MockPciConfig
from pyhv.devices.pci.root import PciRoot, SharedLevelLine, intx_gsi
from pyhv.irq import RecordingIrqLine


class Region:
    """A BAR's register window that remembers what it was asked."""

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.writes = []

    def read(self, offset, size):
        return self.tag + offset

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def plugged(machine, *bars, slot=None):
    root = PciRoot(machine.pio, machine.mmio, machine.memory)
    PciHost(machine.pio, machine.mmio, root, with_ecam=False)
    function = PciFunction(0x1234, 0x5678, 0x02_00_00)
    for bar in bars:
        function.add_bar(bar)
    taken = root.plug(function, slot)
    return root, function, taken, MockPciConfig(machine.pio)


def test_bar_sizing_protocol_for_each_kind(machine):
    _, function, slot, conf = plugged(
        machine, Bar(0, BarKind.IO, 0x40, Region(0)), Bar(1, BarKind.MEM32, 0x1000, Region(0)),
        Bar(2, BarKind.MEM64, 0x4000, Region(0), prefetchable=True))
    assert conf.bar_size(slot, 0) == 0x40
    assert conf.bar_size(slot, 1) == 0x1000
    assert conf.bar_size(slot, 2) == 0x4000
    conf.write(slot, cfg.BAR0, 4, 0xFFFF_FFFF)
    assert conf.read(slot, cfg.BAR0, 4) == 0xFFFF_FFC1  # size mask, I/O space bit
    conf.write(slot, cfg.BAR0 + 8, 4, 0xFFFF_FFFF)
    assert conf.read(slot, cfg.BAR0 + 8, 4) == 0xFFFF_C00C  # 64-bit, prefetchable
    conf.write(slot, cfg.BAR0 + 12, 4, 0xFFFF_FFFF)
    assert conf.read(slot, cfg.BAR0 + 12, 4) == 0xFFFF_FFFF
    assert conf.read(slot, cfg.BAR0 + 16, 4) == 0  # unimplemented BAR 4 is hard-wired to 0


def test_bar_decoding_follows_command_register_and_relocation(machine):
    region = Region(0xAB00)
    _, function, slot, conf = plugged(machine, Bar(1, BarKind.MEM32, 0x1000, region))
    conf.write(slot, cfg.BAR0 + 4, 4, 0xE200_0000)
    assert machine.mmio.find(0xE200_0000) is None  # memory decoding still off
    conf.write(slot, cfg.COMMAND, 2, cfg.COMMAND_MEMORY)
    assert machine.mmio.read(0xE200_0010, 4) == 0xAB10
    conf.write(slot, cfg.BAR0 + 4, 4, 0xE300_0000)  # the guest moves the BAR
    assert machine.mmio.find(0xE200_0000) is None
    assert machine.mmio.read(0xE300_0004, 4) == 0xAB04
    machine.mmio.write(0xE300_0008, 4, 7)
    assert region.writes == [(8, 4, 7)]
    conf.write(slot, cfg.COMMAND, 2, 0)
    assert machine.mmio.find(0xE300_0000) is None


def test_io_bar_lands_on_the_port_bus(machine):
    _, function, slot, conf = plugged(machine, Bar(0, BarKind.IO, 0x20, Region(0x10)))
    conf.write(slot, cfg.BAR0, 4, 0xC041)  # low bits are read-only: aligned down to 0xC040
    conf.write(slot, cfg.COMMAND, 2, cfg.COMMAND_IO)
    assert function.bars[0].address == 0xC040
    assert machine.pio.read(0xC042, 1) == 0x12


def test_64bit_bar_above_4g(machine):
    _, function, slot, conf = plugged(machine, Bar(2, BarKind.MEM64, 0x4000, Region(0)))
    conf.write(slot, cfg.BAR0 + 8, 4, 0x0000_0000)
    conf.write(slot, cfg.BAR0 + 12, 4, 0x10)
    conf.write(slot, cfg.COMMAND, 2, cfg.COMMAND_MEMORY)
    assert function.bars[2].address == 0x10_0000_0000
    assert machine.mmio.find(0x10_0000_0000) is not None


def test_bar_on_guest_ram_stays_unmapped(machine):
    root, function, slot, conf = plugged(machine, Bar(1, BarKind.MEM32, 0x1000, Region(0)))
    conf.write(slot, cfg.BAR0 + 4, 4, 0x0010_0000)  # inside the 8 MiB of RAM
    conf.write(slot, cfg.COMMAND, 2, cfg.COMMAND_MEMORY)
    assert function.bars[1].address is None
    assert root.rejected_mappings == 1
    conf.write(slot, cfg.BAR0 + 4, 4, 0xE000_0000)  # a sane address maps it again
    assert function.bars[1].address == 0xE000_0000


def test_overlapping_bars_and_sizing_pattern_stay_unmapped(machine):
    root, function, slot, conf = plugged(
        machine, Bar(0, BarKind.MEM32, 0x1000, Region(0)), Bar(1, BarKind.MEM32, 0x1000, Region(0)))
    conf.write(slot, cfg.BAR0, 4, 0xE000_0000)
    conf.write(slot, cfg.BAR0 + 4, 4, 0xE000_0000)  # the same range twice
    conf.write(slot, cfg.COMMAND, 2, cfg.COMMAND_MEMORY)
    assert [function.bars[0].address, function.bars[1].address] == [0xE000_0000, None]
    assert root.rejected_mappings == 1
    # Sizing with decoding left on: the all-ones pattern is not an address.
    conf.write(slot, cfg.BAR0, 4, 0xFFFF_FFFF)
    assert function.bars[0].address is None
    assert conf.read(slot, cfg.BAR0, 4) == 0xFFFF_F000
    conf.write(slot, cfg.BAR0, 4, 0xE100_0000)
    assert function.bars[0].address == 0xE100_0000


def test_read_only_fields_and_write1_to_clear_status(machine):
    _, function, slot, conf = plugged(machine)
    conf.write(slot, cfg.VENDOR_ID, 4, 0)
    assert conf.read(slot, cfg.VENDOR_ID, 4) == 0x5678_1234
    conf.write(slot, cfg.COMMAND, 2, 0xFFFF)
    assert conf.read(slot, cfg.COMMAND, 2) == cfg.COMMAND_WRITABLE
    function.set_u16(cfg.STATUS, 0x8000)  # the device signalled a parity error
    conf.write(slot, cfg.STATUS, 2, 0x8000)
    assert conf.read(slot, cfg.STATUS, 2) & 0x8000 == 0
    conf.write(slot, cfg.INTERRUPT_PIN, 1, 4)
    assert conf.read(slot, cfg.INTERRUPT_PIN, 1) == 0


def test_accesses_past_config_space(machine):
    _, function, slot, _ = plugged(machine)
    assert function.config_read(0xFE, 4) == 0
    function.config_write(0xFE, 4, 0xFFFF_FFFF)
    assert function.config[0xFE:] == b"\x00\x00"


def test_capability_list_walks_to_the_end(machine):
    function = PciFunction(1, 2, 0)
    first = function.add_capability(0x09, b"\x04\x01")
    second = function.add_capability(0x11, b"\x00" * 10)
    root = PciRoot(machine.pio, machine.mmio)
    PciHost(machine.pio, machine.mmio, root, with_ecam=False)
    slot = root.plug(function)
    conf = MockPciConfig(machine.pio)
    assert conf.read(slot, cfg.STATUS, 2) & cfg.STATUS_CAP_LIST
    assert conf.capabilities(slot) == [(first, 0x09), (second, 0x11)]
    assert first == cfg.CAPABILITIES_START and second % 4 == 0
    assert conf.read(slot, second + 1, 1) == 0  # the list ends


def test_capability_that_does_not_fit(machine):
    function = PciFunction(1, 2, 0)
    with pytest.raises(PciError, match="does not fit"):
        function.add_capability(0x09, bytes(250))


@pytest.mark.parametrize("index,kind,size,message", [
    (0, BarKind.MEM32, 0x1800, "not a power of two"),
    (0, BarKind.IO, 2, "not a power of two"),
    (0, BarKind.IO, 0x200, "up to 256"),
    (5, BarKind.MEM64, 0x1000, "no such BAR"),
    (6, BarKind.MEM32, 0x1000, "no such BAR"),
])
def test_bad_bar_shapes(index, kind, size, message):
    with pytest.raises(PciError, match=message):
        Bar(index, kind, size, Region(0))


def test_bar_overlapping_a_64bit_bar():
    function = PciFunction(1, 2, 0)
    function.add_bar(Bar(2, BarKind.MEM64, 0x1000, Region(0)))
    with pytest.raises(PciError, match="BAR 3 overlaps"):
        function.add_bar(Bar(3, BarKind.MEM32, 0x1000, Region(0)))


def test_plugging_errors(machine):
    root = PciRoot(machine.pio, machine.mmio)
    root.plug(PciFunction(1, 2, 0), 4)
    with pytest.raises(PciError, match="slot 4 is already taken"):
        root.plug(PciFunction(1, 2, 0), 4)
    with pytest.raises(PciError, match="slot 32 does not exist"):
        root.plug(PciFunction(1, 2, 0), 32)
    for _ in range(31):
        root.plug(PciFunction(1, 2, 0))
    with pytest.raises(PciError, match="bus 0 is full"):
        root.plug(PciFunction(1, 2, 0))


def test_allocator_aligns_and_runs_out():
    allocator = BarAllocator(mmio_start=0xE000_0800, mmio_end=0xE000_5000, io_start=0xC004, io_end=0xC100)
    function = PciFunction(1, 2, 0)
    big = function.add_bar(Bar(0, BarKind.MEM32, 0x2000, Region(0)))
    small = function.add_bar(Bar(1, BarKind.MEM32, 0x1000, Region(0)))
    ports = function.add_bar(Bar(2, BarKind.IO, 0x40, Region(0)))
    allocator.assign(function)
    assert function.bar_base(big) == 0xE000_2000  # naturally aligned, largest first
    assert function.bar_base(small) == 0xE000_4000
    assert function.bar_base(ports) == 0xC040
    assert function.command & (cfg.COMMAND_MEMORY | cfg.COMMAND_IO) == cfg.COMMAND_MEMORY | cfg.COMMAND_IO
    with pytest.raises(PciError, match="no room for a 0x2000-byte memory BAR"):
        allocator.allocate(Bar(0, BarKind.MEM32, 0x2000, Region(0)))
    with pytest.raises(PciError, match="no room for a 0x100-byte I/O BAR"):
        allocator.allocate(Bar(0, BarKind.IO, 0x100, Region(0)))


def test_intx_swizzle_and_shared_level():
    assert [intx_gsi(slot, 1) for slot in range(5)] == [20, 21, 22, 23, 20]
    assert intx_gsi(1, 2) == 22
    line = RecordingIrqLine()
    shared = SharedLevelLine(line)
    a, b = shared.source(1), shared.source(2)
    a.set_level(True)
    b.set_level(True)
    a.set_level(False)
    assert line.level is True  # b still holds it
    b.set_level(False)
    assert line.level is False


def test_interrupt_disable_masks_the_pin_but_not_the_status(machine):
    _, function, slot, conf = plugged(machine)
    line = RecordingIrqLine()
    function.use_intx(line, 21)
    assert conf.read(slot, cfg.INTERRUPT_PIN, 1) == cfg.PIN_INTA
    assert conf.read(slot, cfg.INTERRUPT_LINE, 1) == 21
    conf.write(slot, cfg.COMMAND, 2, cfg.COMMAND_INTX_DISABLE)
    function.set_intx(True)
    assert line.level is False
    assert conf.read(slot, cfg.STATUS, 2) & cfg.STATUS_INTERRUPT
    conf.write(slot, cfg.COMMAND, 2, 0)
    assert line.level is True
    function.set_intx(False)
    assert line.level is False and not conf.read(slot, cfg.STATUS, 2) & cfg.STATUS_INTERRUPT

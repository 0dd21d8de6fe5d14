"""The IOAPIC, programmed through IOREGSEL/IOWIN as Linux's io_apic.c does."""

from __future__ import annotations

from typing import List, Tuple

import pytest

from pyhv.bus import Bus
from pyhv.devices.apic_bus import ApicBus
from pyhv.devices.ioapic import IOAPIC_BASE, IoApic

IOREGSEL, IOWIN = 0x00, 0x10
LEVEL, MASKED, LOGICAL, REMOTE_IRR = 1 << 15, 1 << 16, 1 << 11, 1 << 14


class FakeLapic:
    """Records messages; matches physical ID ``apic_id`` or logical bit ``logical_bit``."""

    def __init__(self, apic_id: int, logical_bit: int = 0, priority: int = 0) -> None:
        self.apic_id = apic_id
        self.logical_bit = logical_bit
        self.priority = priority
        self.messages: List[Tuple[int, int, bool]] = []

    def matches(self, dest: int, logical: bool) -> bool:
        return bool(dest & self.logical_bit) if logical else dest in (self.apic_id, 0xFF)

    def arbitration_priority(self) -> int:
        return self.priority

    def receive(self, delivery_mode: int, vector: int, level_triggered: bool) -> None:
        self.messages.append((delivery_mode, vector, level_triggered))


class Board:
    def __init__(self) -> None:
        self.apic_bus = ApicBus()
        self.cpu0 = FakeLapic(0, logical_bit=1, priority=0x20)
        self.cpu1 = FakeLapic(1, logical_bit=2, priority=0x10)
        self.apic_bus.add_lapic(self.cpu0)
        self.apic_bus.add_lapic(self.cpu1)
        self.ioapic = IoApic(self.apic_bus)
        self.mmio = Bus("mmio")
        self.mmio.attach(IOAPIC_BASE, 0x1000, self.ioapic)

    def read_reg(self, index: int) -> int:
        self.mmio.write(IOAPIC_BASE + IOREGSEL, 4, index)
        return self.mmio.read(IOAPIC_BASE + IOWIN, 4)

    def write_reg(self, index: int, value: int) -> None:
        self.mmio.write(IOAPIC_BASE + IOREGSEL, 4, index)
        self.mmio.write(IOAPIC_BASE + IOWIN, 4, value)

    def route(self, pin: int, low: int, dest: int = 0) -> None:
        # Linux writes the high half first, then the low half (ioapic_write_entry).
        self.write_reg(0x11 + 2 * pin, dest << 24)
        self.write_reg(0x10 + 2 * pin, low)


@pytest.fixture
def board() -> Board:
    return Board()


def test_id_version_and_masked_reset_entries(board):
    assert board.read_reg(0x01) == 0x00170011
    board.write_reg(0x00, 0x0A000000)
    assert board.read_reg(0x00) == 0x0A000000
    board.write_reg(0x01, 0)  # read-only
    assert board.read_reg(0x01) == 0x00170011
    for pin in range(24):
        assert board.read_reg(0x10 + 2 * pin) == MASKED
    assert board.read_reg(0x10 + 2 * 24) == 0xFFFFFFFF  # past the table


def test_edge_pin_delivers_once_per_rising_edge(board):
    board.route(2, 0x30)
    board.ioapic.set_irq(2, True)
    board.ioapic.set_irq(2, True)
    board.ioapic.set_irq(2, False)
    board.ioapic.set_irq(2, True)
    assert board.cpu0.messages == [(0, 0x30, False), (0, 0x30, False)]
    assert board.cpu1.messages == []


def test_masked_edge_is_lost(board):
    board.route(4, MASKED | 0x34)
    board.ioapic.set_irq(4, True)
    board.route(4, 0x34)
    assert board.cpu0.messages == []


def test_level_pin_sets_remote_irr_until_eoi(board):
    board.route(10, LEVEL | 0x3A)
    board.ioapic.set_irq(10, True)
    assert board.cpu0.messages == [(0, 0x3A, True)]
    assert board.read_reg(0x10 + 20) & REMOTE_IRR
    board.ioapic.set_irq(10, False)
    board.ioapic.set_irq(10, True)  # remote IRR still set: no new message
    assert len(board.cpu0.messages) == 1
    board.apic_bus.broadcast_eoi(0x3A)  # still asserted: delivered again
    assert len(board.cpu0.messages) == 2
    board.ioapic.set_irq(10, False)
    board.apic_bus.broadcast_eoi(0x3A)
    assert not board.read_reg(0x10 + 20) & REMOTE_IRR
    assert len(board.cpu0.messages) == 2


def test_eoi_of_another_vector_leaves_remote_irr(board):
    board.route(11, LEVEL | 0x3B)
    board.ioapic.set_irq(11, True)
    board.apic_bus.broadcast_eoi(0x3C)
    assert board.read_reg(0x10 + 22) & REMOTE_IRR


def test_unmasking_an_asserted_level_pin_delivers(board):
    board.route(16, MASKED | LEVEL | 0x50)
    board.ioapic.set_irq(16, True)
    assert board.cpu0.messages == []
    board.route(16, LEVEL | 0x50)
    assert board.cpu0.messages == [(0, 0x50, True)]


def test_remote_irr_and_delivery_status_are_read_only(board):
    board.route(5, LEVEL | REMOTE_IRR | (1 << 12) | 0x35)
    assert board.read_reg(0x10 + 10) == LEVEL | 0x35


def test_physical_destination_picks_the_cpu(board):
    board.route(3, 0x33, dest=1)
    board.ioapic.set_irq(3, True)
    assert board.cpu1.messages == [(0, 0x33, False)] and board.cpu0.messages == []
    assert board.read_reg(0x11 + 6) == 1 << 24


def test_logical_lowest_priority_picks_the_lowest_tpr(board):
    board.route(6, LOGICAL | (1 << 8) | 0x36, dest=0x03)
    board.ioapic.set_irq(6, True)
    assert board.cpu1.messages == [(1, 0x36, False)] and board.cpu0.messages == []


def test_unaddressed_messages_are_counted(board):
    board.route(7, 0x37, dest=5)
    board.ioapic.set_irq(7, True)
    assert board.apic_bus.dropped == 1


def test_msi_decodes_address_and_data(board):
    assert board.apic_bus.deliver_msi(0xFEE01000, 0x4041) == 1
    assert board.cpu1.messages == [(0, 0x41, False)]
    assert board.apic_bus.deliver_msi(0xFED00000, 0x41) == 0

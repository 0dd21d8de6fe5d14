"""End to end: PIT -> PIC -> CPU and PIT -> IOAPIC -> local APIC -> CPU, on a virtual clock."""

from __future__ import annotations

import pytest

from pyhv.bus import Bus
from pyhv.clock import InstructionClock, TimerQueue
from pyhv.devices.irq_router import InterruptSource, IrqRouter, IrqRoutingError, SoftIrqChip
from pyhv.devices.lapic import BASE_ENABLE, LAPIC_BASE
from pyhv.devices.pic import PicPair
from pyhv.devices.pit import ticks_to_ns

IOAPIC = 0xFEC00000


class Board:
    def __init__(self) -> None:
        self.clock = InstructionClock()
        self.timers = TimerQueue()
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.chip = SoftIrqChip(self.clock, self.timers, self.pio, self.mmio)
        self.source = self.chip.source
        self.raised = 0
        self.source.on_raise = self._raised

    def _raised(self) -> None:
        self.raised += 1

    def out(self, port: int, value: int) -> None:
        self.pio.write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.pio.read(port, 1)

    def apic_write(self, reg: int, value: int) -> None:
        self.mmio.write(LAPIC_BASE + reg, 4, value)

    def ioapic_write(self, index: int, value: int) -> None:
        self.mmio.write(IOAPIC, 4, index)
        self.mmio.write(IOAPIC + 0x10, 4, value)

    def run_until_pending(self, limit_ns: int) -> int:
        """Advance like a halted CPU: warp to each timer until an interrupt is pending."""
        while not self.source.pending:
            deadline = self.timers.earliest
            assert deadline <= limit_ns, "no interrupt before the limit"
            self.clock.warp_to(deadline)
            self.timers.run_expired(self.clock.now)
        return self.clock.now

    def init_pic(self, master_mask: int = 0xFE) -> None:
        """The PIC part of tests/guests/hlt_timer.S."""
        for port, value in ((0x20, 0x11), (0xA0, 0x11), (0x21, 0x20), (0xA1, 0x28), (0x21, 0x04),
                            (0xA1, 0x02), (0x21, 0x01), (0xA1, 0x01), (0x21, master_mask), (0xA1, 0xFF)):
            self.out(port, value)

    def start_pit_1khz(self) -> None:
        self.out(0x43, 0x34)
        self.out(0x40, 1193 & 0xFF)
        self.out(0x40, 1193 >> 8)


@pytest.fixture
def board() -> Board:
    return Board()


def test_pit_through_pic_gives_vector_0x20_each_millisecond(board):
    """What hlt_timer.S expects: IRQ0 via the PIC in virtual-wire mode, EOI, next tick."""
    board.init_pic()
    assert board.inb(0x21) == 0xFE
    board.start_pit_1khz()
    times = []
    for _ in range(5):
        times.append(board.run_until_pending(10**8))
        assert board.source.acknowledge() == 0x20
        assert not board.source.pending
        board.out(0x20, 0x20)  # EOI
    assert times == [ticks_to_ns(1193 * k) for k in range(1, 6)]
    assert board.raised == 5


def test_masking_irq0_at_the_pic_stops_ticks(board):
    board.init_pic()
    board.start_pit_1khz()
    board.run_until_pending(10**8)
    assert board.source.acknowledge() == 0x20
    board.out(0x21, 0xFF)
    board.out(0x20, 0x20)
    board.clock.warp_to(10**7)
    board.timers.run_expired(board.clock.now)
    assert not board.source.pending
    assert board.inb(0x21) == 0xFF


def test_pit_through_ioapic_pin2_and_lapic(board):
    """Linux's IO-APIC mode: ISA IRQ 0 arrives on pin 2 (the MADT override), PIC masked."""
    board.init_pic(master_mask=0xFF)
    board.apic_write(0xF0, 0x1FF)  # software enable
    board.apic_write(0x350, 0x10000)  # LINT0 masked: no ExtINT
    board.ioapic_write(0x15, 0)  # pin 2 destination APIC 0
    board.ioapic_write(0x14, 0x30)  # pin 2: vector 0x30, edge, fixed, unmasked
    board.start_pit_1khz()
    at = board.run_until_pending(10**8)
    assert at == ticks_to_ns(1193)
    assert board.source.acknowledge() == 0x30
    assert not board.chip.pic.master.isr  # the PIC took no part
    board.apic_write(0xB0, 0)
    assert board.run_until_pending(10**8) == ticks_to_ns(2 * 1193)
    assert board.source.acknowledge() == 0x30


def test_level_triggered_gsi_through_ioapic_needs_eoi(board):
    board.init_pic(master_mask=0xFF)  # an unprogrammed PIC would pass the PIT's IRQ 0 on
    board.apic_write(0xF0, 0x1FF)
    board.ioapic_write(0x10 + 2 * 17, 0x8000 | 0x51)  # GSI 17: level, vector 0x51
    line = board.chip.irq_line(17)
    line.set_level(True)
    assert board.source.acknowledge() == 0x51
    board.apic_write(0xB0, 0)  # EOI while still asserted: delivered again
    assert board.source.pending
    assert board.source.acknowledge() == 0x51
    line.set_level(False)
    board.apic_write(0xB0, 0)
    assert not board.source.pending


def test_lapic_vectors_come_before_extint(board):
    board.init_pic(master_mask=0xFD)
    board.apic_write(0xF0, 0x1FF)
    board.chip.irq_line(1).set_level(True)  # keyboard through the PIC (ExtINT)
    board.apic_write(0x300, (1 << 18) | 0x40)  # self-IPI
    assert board.source.acknowledge() == 0x40
    assert board.source.acknowledge() == 0x21


def test_pic_goes_straight_to_the_cpu_when_the_apic_is_disabled(board):
    board.init_pic(master_mask=0xFD)
    board.chip.lapic.write_msr(0x1B, LAPIC_BASE)  # global disable
    assert not board.chip.lapic.read_msr(0x1B) & BASE_ENABLE
    board.chip.irq_line(1).set_level(True)
    assert board.source.pending
    assert board.source.acknowledge() == 0x21


def test_masked_lint0_blocks_the_pic(board):
    board.init_pic(master_mask=0xFD)
    board.apic_write(0xF0, 0x1FF)
    board.apic_write(0x350, 0x10700)  # LINT0 ExtINT but masked
    board.chip.irq_line(1).set_level(True)
    assert board.chip.pic.output and not board.source.pending
    assert board.source.acknowledge() is None
    board.apic_write(0x350, 0x700)
    assert board.source.pending


def test_isa_irqs_also_reach_the_ioapic(board):
    board.init_pic(master_mask=0xFF)
    board.apic_write(0xF0, 0x1FF)
    board.ioapic_write(0x10 + 2 * 4, 0x34)  # COM1's IRQ 4 on pin 4
    board.chip.irq_line(4).set_level(True)
    assert board.source.acknowledge() == 0x34
    assert not board.source.pending  # the PIC, masked, adds nothing


def test_nmi_paths(board):
    assert not board.source.nmi_pending
    board.source.raise_nmi()
    assert board.source.nmi_pending and board.raised == 1
    assert board.source.take_nmi()
    assert not board.source.take_nmi()
    board.chip.lapic.write_msr(0x1B, LAPIC_BASE)  # APIC off: NMI goes straight in
    board.source.raise_nmi()
    assert board.source.nmi_pending
    assert board.source.take_nmi() and not board.source.nmi_pending


def test_without_lapic_the_source_is_the_pic():
    pic = PicPair()
    router = IrqRouter(pic, None)
    source = InterruptSource(pic)
    for port_value in ((0, 0x11), (1, 0x08), (1, 0x04), (1, 0x01), (1, 0xFE)):
        pic.master_port.write(port_value[0], 1, port_value[1])
    router.set_gsi(0, True)
    assert source.pending
    assert source.acknowledge() == 0x08


@pytest.mark.parametrize("gsi, problem", [(2, "cascade"), (24, "does not exist"), (-1, "does not exist")])
def test_bad_irq_lines_are_refused(board, gsi, problem):
    with pytest.raises(IrqRoutingError, match=problem):
        board.chip.irq_line(gsi)


def test_set_gsi_refuses_lines_past_the_ioapic(board):
    with pytest.raises(IrqRoutingError, match="interrupt line 30 does not exist"):
        board.chip.router.set_gsi(30, True)


def test_the_chip_claims_the_standard_addresses(board):
    claimed = {base for base, _, _ in board.pio.devices()}
    assert {0x20, 0xA0, 0x4D0, 0x40, 0x61} <= claimed
    assert {base for base, _, _ in board.mmio.devices()} == {0xFEC00000, 0xFEE00000}


def test_reset_returns_every_controller_to_power_up(board):
    board.init_pic()
    board.start_pit_1khz()
    board.apic_write(0xF0, 0x1FF)
    board.apic_write(0x80, 0x40)
    board.ioapic_write(0x14, 0x30)
    board.chip.reset()
    assert board.inb(0x21) == 0  # IMR cleared, as at power-up
    assert board.mmio.read(LAPIC_BASE + 0x80, 4) == 0
    assert board.mmio.read(LAPIC_BASE + 0xF0, 4) == 0xFF
    board.mmio.write(IOAPIC, 4, 0x14)
    assert board.mmio.read(IOAPIC + 0x10, 4) == 0x10000
    assert board.timers.next_deadline() is None  # the PIT stopped counting
    assert board.chip.pit.channels[0].out()

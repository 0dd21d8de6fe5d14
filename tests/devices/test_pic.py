"""The 8259A pair, programmed through its ports as Linux's i8259 driver does."""

from __future__ import annotations

from typing import List

import pytest

from pyhv.bus import Bus
from pyhv.devices.pic import PicPair

MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA = 0x20, 0x21, 0xA0, 0xA1
ELCR0, ELCR1 = 0x4D0, 0x4D1
OCW3_READ_IRR, OCW3_READ_ISR, OCW3_POLL = 0x0A, 0x0B, 0x0C
EOI = 0x20


class Board:
    def __init__(self) -> None:
        self.outputs: List[bool] = []
        self.pic = PicPair(on_output=self.outputs.append)
        self.bus = Bus("pio")
        self.pic.attach(self.bus)

    def out(self, port: int, value: int) -> None:
        self.bus.write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.bus.read(port, 1)

    def init_8259a(self, auto_eoi: bool = False, master_base: int = 0x30, slave_base: int = 0x38) -> None:
        """arch/x86/kernel/i8259.c:init_8259A, port for port."""
        self.out(MASTER_DATA, 0xFF)
        self.out(SLAVE_DATA, 0xFF)
        self.out(MASTER_CMD, 0x11)  # ICW1: edge, cascade, ICW4
        self.out(MASTER_DATA, master_base)  # ICW2
        self.out(MASTER_DATA, 1 << 2)  # ICW3: slave on IR2
        self.out(MASTER_DATA, 0x03 if auto_eoi else 0x01)  # ICW4: 8086 (+ AEOI)
        self.out(SLAVE_CMD, 0x11)
        self.out(SLAVE_DATA, slave_base)
        self.out(SLAVE_DATA, 2)  # slave identity
        self.out(SLAVE_DATA, 0x01)
        self.out(MASTER_DATA, 0xFB)  # cached masks: all but the cascade
        self.out(SLAVE_DATA, 0xFF)

    def unmask(self, irq: int) -> None:
        port = MASTER_DATA if irq < 8 else SLAVE_DATA
        self.out(port, self.inb(port) & ~(1 << (irq & 7)))

    def pulse(self, irq: int) -> None:
        self.pic.set_irq(irq, True)
        self.pic.set_irq(irq, False)

    def isr(self, cmd_port: int) -> int:
        self.out(cmd_port, OCW3_READ_ISR)
        value = self.inb(cmd_port)
        self.out(cmd_port, OCW3_READ_IRR)
        return value


@pytest.fixture
def board() -> Board:
    b = Board()
    b.init_8259a()
    return b


def test_linux_init_sequence_sets_bases_and_masks(board):
    assert board.inb(MASTER_DATA) == 0xFB
    assert board.inb(SLAVE_DATA) == 0xFF
    board.unmask(0)
    board.pulse(0)
    assert board.pic.has_interrupt()
    assert board.pic.acknowledge() == 0x30


def test_mask_readback_probe(board):
    # probe_8259A: write 0xff, read it back
    board.out(MASTER_DATA, 0xFF)
    assert board.inb(MASTER_DATA) == 0xFF
    board.out(MASTER_DATA, 0x5A)
    assert board.inb(MASTER_DATA) == 0x5A


def test_masked_irq_stays_in_irr_until_unmasked(board):
    board.pulse(1)
    assert not board.pic.has_interrupt()
    assert board.inb(MASTER_CMD) & 0x02  # IRR reads by default
    board.unmask(1)
    assert board.pic.has_interrupt()
    assert board.outputs[-1] is True
    assert board.pic.acknowledge() == 0x31


def test_priorities_and_eoi_nesting(board):
    for irq in (0, 1, 3):
        board.unmask(irq)
    board.pulse(3)
    board.pulse(1)
    assert board.pic.acknowledge() == 0x31  # IRQ1 beats IRQ3
    assert not board.pic.has_interrupt()  # IRQ3 is lower than in-service IRQ1
    board.pulse(0)
    assert board.pic.acknowledge() == 0x30  # higher priority nests
    assert board.isr(MASTER_CMD) == 0x03
    board.out(MASTER_CMD, EOI)  # non-specific EOI retires the highest: IRQ0
    assert board.isr(MASTER_CMD) == 0x02
    assert not board.pic.has_interrupt()
    board.out(MASTER_CMD, 0x60 | 1)  # specific EOI for IRQ1
    assert board.isr(MASTER_CMD) == 0
    assert board.pic.acknowledge() == 0x33


def test_edge_triggered_needs_a_new_edge(board):
    board.unmask(4)
    board.pic.set_irq(4, True)
    assert board.pic.acknowledge() == 0x34
    board.out(MASTER_CMD, EOI)
    board.pic.set_irq(4, True)  # still high: no new edge
    assert not board.pic.has_interrupt()
    board.pic.set_irq(4, False)
    board.pic.set_irq(4, True)
    assert board.pic.has_interrupt()


def test_level_triggered_via_elcr_follows_the_line(board):
    board.out(ELCR1, 0x08)  # IRQ 11 level
    assert board.inb(ELCR1) == 0x08
    board.unmask(2)
    board.unmask(11)
    board.pic.set_irq(11, True)
    assert board.pic.acknowledge() == 0x3B
    board.out(SLAVE_CMD, EOI)
    board.out(MASTER_CMD, EOI)
    assert board.pic.has_interrupt()  # still asserted: requests again
    board.pic.set_irq(11, False)
    # The slave withdraws its request, but the master latched the cascade edge: the INTA
    # finds nothing on the slave and yields its spurious IRQ15, as on the real part.
    assert not board.pic.slave.irr & 0x08
    assert board.pic.acknowledge() == 0x3F
    assert not board.pic.has_interrupt()


def test_elcr_cannot_make_timer_cascade_rtc_or_fpu_level(board):
    board.out(ELCR0, 0xFF)
    board.out(ELCR1, 0xFF)
    assert board.inb(ELCR0) == 0xF8
    assert board.inb(ELCR1) == 0xDE
    assert board.bus.read(ELCR0, 2) == 0xDEF8


def test_cascade_delivers_slave_vectors(board):
    board.unmask(2)
    board.unmask(12)
    board.pulse(12)
    assert board.pic.has_interrupt()
    assert board.pic.acknowledge() == 0x3C
    assert board.isr(MASTER_CMD) == 0x04 and board.isr(SLAVE_CMD) == 0x10
    # Linux's mask_and_ack for a slave IRQ: specific EOI to the slave, then to the master.
    board.out(SLAVE_CMD, 0x60 | 4)
    board.out(MASTER_CMD, 0x60 | 2)
    assert board.isr(MASTER_CMD) == 0 and board.isr(SLAVE_CMD) == 0


def test_slave_irq_blocked_while_cascade_in_service_unless_fully_nested(board):
    board.unmask(2)
    for irq in (8, 12):
        board.unmask(irq)
    board.pulse(12)
    assert board.pic.acknowledge() == 0x3C
    board.pulse(8)  # higher priority on the slave, but the master's IR2 is in service
    assert not board.pic.has_interrupt()
    board.out(SLAVE_CMD, EOI)
    board.out(MASTER_CMD, EOI)
    assert board.pic.acknowledge() == 0x38


def test_special_fully_nested_lets_the_slave_interrupt_itself():
    board = Board()
    board.init_8259a()
    board.out(MASTER_CMD, 0x11)
    board.out(MASTER_DATA, 0x30)
    board.out(MASTER_DATA, 0x04)
    board.out(MASTER_DATA, 0x11)  # ICW4: 8086 + SFNM
    board.unmask(2)
    board.unmask(8)
    board.unmask(12)
    board.pulse(12)
    assert board.pic.acknowledge() == 0x3C
    board.pulse(8)
    assert board.pic.has_interrupt()
    assert board.pic.acknowledge() == 0x38


def test_spurious_irq7_when_the_request_goes_away(board):
    board.out(ELCR0, 0x20)  # IRQ5 level
    board.unmask(5)
    board.pic.set_irq(5, True)
    assert board.pic.has_interrupt()
    board.pic.set_irq(5, False)
    assert board.pic.acknowledge() == 0x37  # spurious IRQ7 of the master
    assert board.isr(MASTER_CMD) == 0  # no ISR bit for a spurious interrupt


def test_spurious_irq15_from_the_slave(board):
    board.out(ELCR1, 0x02)  # IRQ9 level
    board.unmask(2)
    board.unmask(9)
    board.pic.set_irq(9, True)
    board.pic.set_irq(9, False)
    # The master latched the cascade edge; the slave has nothing left.
    assert board.pic.acknowledge() == 0x3F
    assert board.isr(SLAVE_CMD) == 0


def test_auto_eoi_leaves_isr_clear():
    board = Board()
    board.init_8259a(auto_eoi=True)
    board.unmask(0)
    board.pulse(0)
    assert board.pic.acknowledge() == 0x30
    assert board.isr(MASTER_CMD) == 0
    board.pulse(0)
    assert board.pic.has_interrupt()


def test_poll_mode_reports_and_acknowledges(board):
    board.unmask(6)
    board.out(MASTER_CMD, OCW3_POLL)
    assert board.inb(MASTER_CMD) == 0  # nothing pending
    board.pulse(6)
    board.out(MASTER_CMD, OCW3_POLL)
    assert board.inb(MASTER_DATA) == 0x86
    assert board.isr(MASTER_CMD) == 0x40
    assert not board.pic.has_interrupt()


def test_rotation_on_nonspecific_eoi_makes_the_served_irq_lowest(board):
    board.unmask(1)
    board.unmask(3)
    board.pulse(1)
    assert board.pic.acknowledge() == 0x31
    board.out(MASTER_CMD, 0xA0)  # rotate on non-specific EOI: IRQ1 now lowest
    board.pulse(1)
    board.pulse(3)
    assert board.pic.acknowledge() == 0x33


def test_set_priority_command(board):
    board.unmask(0)
    board.unmask(5)
    board.out(MASTER_CMD, 0xC0 | 4)  # IRQ4 lowest, IRQ5 highest
    board.pulse(0)
    board.pulse(5)
    assert board.pic.acknowledge() == 0x35


def test_special_mask_mode_allows_lower_priorities(board):
    board.unmask(1)
    board.unmask(4)
    board.pulse(1)
    assert board.pic.acknowledge() == 0x31
    board.out(MASTER_DATA, board.inb(MASTER_DATA) | 0x02)  # mask the in-service IRQ1
    board.out(MASTER_CMD, 0x68)  # OCW3: set special mask
    board.pulse(4)
    assert board.pic.acknowledge() == 0x34
    board.out(MASTER_CMD, 0x48)  # clear special mask
    assert board.isr(MASTER_CMD) == 0x12


def test_icw1_resets_state_and_single_mode_skips_icw3():
    board = Board()
    board.out(MASTER_CMD, 0x13)  # single, ICW4
    board.out(MASTER_DATA, 0x48)
    board.out(MASTER_DATA, 0x01)  # goes to ICW4, not ICW3
    board.out(MASTER_DATA, 0x00)  # now OCW1
    assert board.inb(MASTER_DATA) == 0
    board.pulse(2)  # in single mode IRQ2 is an ordinary line, but it is the cascade here
    board.pulse(3)
    assert board.pic.acknowledge() == 0x4B


def test_icw2_ignores_the_low_three_bits(board):
    board.out(MASTER_CMD, 0x11)
    board.out(MASTER_DATA, 0x47)
    board.out(MASTER_DATA, 0x04)
    board.out(MASTER_DATA, 0x01)
    board.out(MASTER_DATA, 0xFE)
    board.pulse(0)
    assert board.pic.acknowledge() == 0x40

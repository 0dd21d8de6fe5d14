"""The 8259A programmable interrupt controller pair of the PC, with the PIIX ELCR registers.

The master answers ports 0x20/0x21, the slave 0xA0/0xA1 and cascades into the master's
IRQ 2; the edge/level control registers sit at 0x4D0 (IRQs 0-7) and 0x4D1 (IRQs 8-15).
A device raises an ISA IRQ with :meth:`PicPair.set_irq`; the CPU side tests
:attr:`PicPair.output` (the INTR pin) and runs the INTA cycle with :meth:`acknowledge`.

Programming follows the 8259A datasheet: ICW1 (bit 4 set on the command port) starts the
init sequence ICW2 (vector base), ICW3 (cascade wiring, when not in single mode), ICW4
(when ICW1 bit 0 asked for it: auto-EOI, special fully nested). Afterwards the data port is
OCW1 (the mask) and the command port OCW2 (EOIs, rotation, priority) or OCW3 (bit 3 set:
IRR/ISR read select, poll, special mask).

Priorities rotate with ``lowest_priority``: IRQ (lowest_priority + 1) & 7 is highest.
An INTA with nothing left to deliver (the line dropped in between) gives the spurious IRQ 7
of the chip, without setting its ISR bit.
"""

from __future__ import annotations

from typing import Callable, Optional

MASTER_BASE = 0x20
SLAVE_BASE = 0xA0
ELCR_BASE = 0x4D0

COMMAND_OFFSET = 0
DATA_OFFSET = 1

CASCADE_IRQ = 2
SPURIOUS_IRQ = 7

ICW1_IC4 = 0x01  # ICW4 follows
ICW1_SINGLE = 0x02  # no slave: skip ICW3
ICW1_LTIM = 0x08  # all inputs level triggered
ICW1_INIT = 0x10
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10  # special fully nested mode
OCW3_SELECT = 0x08
OCW3_READ_REGISTER = 0x02  # RR: bit 0 (RIS) picks ISR (1) or IRR (0)
OCW3_READ_ISR = 0x01
OCW3_POLL = 0x04
OCW3_SET_SPECIAL_MASK = 0x40  # ESMM: bit 5 (SMM) sets or clears special mask mode
OCW3_SPECIAL_MASK = 0x20

# OCW2 commands, bits 7-5 (R, SL, EOI).
OCW2_ROTATE_AEOI_CLEAR = 0
OCW2_NONSPECIFIC_EOI = 1
OCW2_NOP = 2
OCW2_SPECIFIC_EOI = 3
OCW2_ROTATE_AEOI_SET = 4
OCW2_ROTATE_NONSPECIFIC_EOI = 5
OCW2_SET_PRIORITY = 6
OCW2_ROTATE_SPECIFIC_EOI = 7

POLL_INTERRUPT = 0x80

# Lines the PIIX wires edge-only: the timer, keyboard and cascade (0-2), the RTC (8) and
# the FPU error (13).
ELCR_WRITABLE = (0xF8, 0xDE)

# Init-sequence states: which ICW the data port takes next.
_READY, _ICW2, _ICW3, _ICW4 = 0, 1, 2, 3


class I8259:
    """One 8259A chip."""

    def __init__(self, is_master: bool, elcr_writable: int) -> None:
        self.is_master = is_master
        self.elcr_writable = elcr_writable
        self.elcr = 0
        self.reset()

    def reset(self) -> None:
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.line_levels = 0  # the input lines as last driven, for edge detection
        self.vector_base = 0
        self.lowest_priority = 7  # IRQ 0 highest
        self.init_state = _READY
        self.expect_icw4 = False
        self.single_mode = False
        self.level_all = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.cascade_wiring = 0

    def _start_init(self, icw1: int) -> None:
        # ICW1 clears the mask and ISR, and edge detection starts over: a line already high
        # must go low and high again before it requests an interrupt.
        self.imr = 0
        self.isr = 0
        self.irr &= self.elcr
        self.line_levels &= self.elcr
        self.lowest_priority = 7
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False
        self.expect_icw4 = bool(icw1 & ICW1_IC4)
        self.single_mode = bool(icw1 & ICW1_SINGLE)
        self.level_all = bool(icw1 & ICW1_LTIM)
        self.init_state = _ICW2

    # --- inputs ---------------------------------------------------------------------------
    def level_triggered(self, irq: int) -> bool:
        return self.level_all or bool(self.elcr & (1 << irq))

    def set_irq(self, irq: int, level: bool) -> None:
        bit = 1 << irq
        if self.level_triggered(irq):
            if level:
                self.irr |= bit
                self.line_levels |= bit
            else:
                self.irr &= ~bit
                self.line_levels &= ~bit
        elif level:
            if not self.line_levels & bit:
                self.irr |= bit
            self.line_levels |= bit
        else:
            # An edge stays requested once latched, whatever the line does next.
            self.line_levels &= ~bit

    # --- priority resolution --------------------------------------------------------------
    def _highest(self, bits: int) -> int:
        """The priority rank (0 = highest) of the highest-priority set bit, or 8 if none."""
        if not bits:
            return 8
        start = (self.lowest_priority + 1) & 7
        for rank in range(8):
            if bits & (1 << ((start + rank) & 7)):
                return rank
        return 8

    def pending_irq(self) -> int:
        """The IRQ this chip would signal now, or -1."""
        request_rank = self._highest(self.irr & ~self.imr)
        if request_rank == 8:
            return -1
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr
        if self.special_fully_nested and self.is_master:
            # The slave may interrupt its own in-service request through the cascade line.
            in_service &= ~(1 << CASCADE_IRQ)
        if request_rank < self._highest(in_service):
            return (request_rank + self.lowest_priority + 1) & 7
        return -1

    def accept(self, irq: int) -> None:
        """The INTA cycle for ``irq``: move it from IRR to ISR (or not, with auto-EOI)."""
        bit = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.lowest_priority = irq
        else:
            self.isr |= bit
        if not self.level_triggered(irq):
            self.irr &= ~bit

    def _eoi(self, command: int, level: int) -> None:
        if command in (OCW2_NONSPECIFIC_EOI, OCW2_ROTATE_NONSPECIFIC_EOI):
            rank = self._highest(self.isr)
            if rank == 8:
                return
            irq = (rank + self.lowest_priority + 1) & 7
            self.isr &= ~(1 << irq)
            if command == OCW2_ROTATE_NONSPECIFIC_EOI:
                self.lowest_priority = irq
        elif command in (OCW2_SPECIFIC_EOI, OCW2_ROTATE_SPECIFIC_EOI):
            self.isr &= ~(1 << level)
            if command == OCW2_ROTATE_SPECIFIC_EOI:
                self.lowest_priority = level

    # --- register interface ---------------------------------------------------------------
    def write_command(self, value: int) -> None:
        if value & ICW1_INIT:
            self._start_init(value)
        elif value & OCW3_SELECT:
            if value & OCW3_POLL:
                self.poll = True
            if value & OCW3_READ_REGISTER:
                self.read_isr = bool(value & OCW3_READ_ISR)
            if value & OCW3_SET_SPECIAL_MASK:
                self.special_mask = bool(value & OCW3_SPECIAL_MASK)
        else:
            command = value >> 5
            level = value & 7
            if command == OCW2_ROTATE_AEOI_CLEAR:
                self.rotate_on_auto_eoi = False
            elif command == OCW2_ROTATE_AEOI_SET:
                self.rotate_on_auto_eoi = True
            elif command == OCW2_SET_PRIORITY:
                self.lowest_priority = level
            elif command != OCW2_NOP:
                self._eoi(command, level)

    def write_data(self, value: int) -> None:
        state = self.init_state
        if state == _READY:
            self.imr = value
        elif state == _ICW2:
            self.vector_base = value & 0xF8
            if not self.single_mode:
                self.init_state = _ICW3
            else:
                self.init_state = _ICW4 if self.expect_icw4 else _READY
        elif state == _ICW3:
            self.cascade_wiring = value
            self.init_state = _ICW4 if self.expect_icw4 else _READY
        else:
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.special_fully_nested = bool(value & ICW4_SFNM)
            self.init_state = _READY

    def poll_read(self) -> int:
        """A read in poll mode: acknowledge the pending IRQ, if any, and report it."""
        self.poll = False
        irq = self.pending_irq()
        if irq < 0:
            return 0
        self.accept(irq)
        return POLL_INTERRUPT | irq

    def read_command(self) -> int:
        return self.isr if self.read_isr else self.irr


class PicPair:
    """Master and slave 8259A, cascaded on IRQ 2, as on every PC.

    ``output`` is the master's INTR pin; ``on_output(level)`` is called whenever it changes.
    """

    def __init__(self, on_output: Optional[Callable[[bool], None]] = None) -> None:
        self.master = I8259(True, ELCR_WRITABLE[0])
        self.slave = I8259(False, ELCR_WRITABLE[1])
        self.output = False
        self.on_output = on_output
        self.master_port = _ChipPorts(self, self.master)
        self.slave_port = _ChipPorts(self, self.slave)
        self.elcr_port = _ElcrPorts(self)

    def attach(self, pio_bus) -> None:
        """Claim the PC's standard ports on ``pio_bus``."""
        pio_bus.attach(MASTER_BASE, 2, self.master_port)
        pio_bus.attach(SLAVE_BASE, 2, self.slave_port)
        pio_bus.attach(ELCR_BASE, 2, self.elcr_port)

    def reset(self) -> None:
        self.master.reset()
        self.slave.reset()
        self.update()

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA IRQ ``irq`` (0-15). IRQ 2 is the cascade and cannot be driven."""
        if irq < 8:
            if irq != CASCADE_IRQ:
                self.master.set_irq(irq, level)
        else:
            self.slave.set_irq(irq - 8, level)
        self.update()

    def update(self) -> None:
        """Recompute the cascade line and the INTR output after any state change."""
        self.master.set_irq(CASCADE_IRQ, self.slave.pending_irq() >= 0)
        output = self.master.pending_irq() >= 0
        if output != self.output:
            self.output = output
            if self.on_output is not None:
                self.on_output(output)

    def has_interrupt(self) -> bool:
        return self.output

    def acknowledge(self) -> int:
        """The INTA cycle: the vector of the highest-priority request, or a spurious vector."""
        master, slave = self.master, self.slave
        irq = master.pending_irq()
        if irq < 0:
            vector = master.vector_base + SPURIOUS_IRQ
        elif irq == CASCADE_IRQ and not master.single_mode:
            master.accept(irq)
            slave_irq = slave.pending_irq()
            if slave_irq < 0:
                vector = slave.vector_base + SPURIOUS_IRQ
            else:
                slave.accept(slave_irq)
                vector = slave.vector_base + slave_irq
        else:
            master.accept(irq)
            vector = master.vector_base + irq
        self.update()
        return vector

    def _poll(self, chip: I8259) -> int:
        # A master poll answering IRQ 2 leaves the slave to be polled next, as the
        # datasheet describes for cascaded polling.
        value = chip.poll_read()
        self.update()
        return value


class _ChipPorts:
    """The command (offset 0) and data (offset 1) ports of one chip."""

    def __init__(self, pair: PicPair, chip: I8259) -> None:
        self._pair = pair
        self._chip = chip

    def read(self, offset: int, size: int) -> int:
        chip = self._chip
        if chip.poll:
            return self._pair._poll(chip)
        if offset == COMMAND_OFFSET:
            return chip.read_command()
        return chip.imr

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == COMMAND_OFFSET:
            self._chip.write_command(value)
        else:
            self._chip.write_data(value)
        self._pair.update()


class _ElcrPorts:
    """The PIIX edge/level control registers: offset 0 for IRQs 0-7, 1 for IRQs 8-15."""

    def __init__(self, pair: PicPair) -> None:
        self._pair = pair

    def _chip(self, offset: int) -> I8259:
        return self._pair.master if offset == 0 else self._pair.slave

    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            if offset + i < 2:
                value |= self._chip(offset + i).elcr << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            if offset + i < 2:
                chip = self._chip(offset + i)
                chip.elcr = (value >> (8 * i)) & chip.elcr_writable
        self._pair.update()

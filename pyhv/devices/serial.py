"""A 16550A UART, as on the PC's COM1 (I/O 0x3f8-0x3ff, IRQ 4).

Transmission is instantaneous: a byte written to THR goes straight to the character
back-end, so THR and the transmit shift register are always empty again by the time the
guest looks, and a THR-empty interrupt follows every write.

Host input arrives on the back-end's reader thread through :meth:`Serial.receive`. It is
queued in a host-side backlog and moved into the receive FIFO only as space frees up, the
way QEMU's chardev layer asks ``can_receive`` first: pasted text is never overrun. An
overrun (LSR.OE) therefore happens only in loopback mode, where the guest feeds itself.

The character-timeout interrupt (IIR 0x0C) is reported whenever the FIFO holds fewer bytes
than the trigger level. A real chip waits four character times for more bytes to arrive;
here a back-end hands over a whole burst at once, so once ``receive`` returns nothing more
is in flight and waiting would only add latency and a timer thread.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Deque, Optional, Tuple

from ..irq import IrqLine

from typing import Protocol

# Register offsets from the base port.
RBR_THR = 0  # receive buffer (read) / transmit holding (write); DLL while LCR.DLAB
IER = 1  # interrupt enable; DLM while LCR.DLAB
IIR_FCR = 2  # interrupt identification (read) / FIFO control (write)
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7
REGISTER_COUNT = 8

IER_RDI = 0x01  # received data available (and character timeout)
IER_THRI = 0x02  # transmit holding register empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08  # modem status
IER_MASK = 0x0F

IIR_NO_INTERRUPT = 0x01
IIR_MODEM_STATUS = 0x00
IIR_THR_EMPTY = 0x02
IIR_RX_DATA = 0x04
IIR_LINE_STATUS = 0x06
IIR_RX_TIMEOUT = 0x0C
IIR_FIFOS_ENABLED = 0xC0

FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FCR_TRIGGER_SHIFT = 6
RX_TRIGGER_LEVELS = (1, 4, 8, 14)

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08  # on the PC, gates the UART's interrupt onto the ISA IRQ line
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
# With no real modem behind it, the port looks connected and ready, as under QEMU.
MSR_IDLE_LINES = MSR_DCD | MSR_DSR | MSR_CTS

FIFO_SIZE = 16
BASE_BAUD = 115200  # 1.8432 MHz crystal / 16
# Host input held back while the guest does not read; past this, receive() waits.
BACKLOG_LIMIT = 64 * 1024


class CharSink(Protocol):
    def write(self, data: bytes) -> None: ...


class Serial:
    """One 16550A UART; attach it on the port bus with length :data:`REGISTER_COUNT`."""

    def __init__(self, irq: IrqLine, output: Optional[CharSink] = None) -> None:
        self._irq = irq
        self._output = output
        self._lock = threading.Lock()
        self._backlog_drained = threading.Condition(self._lock)
        self._backlog = bytearray()
        self._rx: Deque[int] = deque()
        self._reads: Tuple[Callable[[], int], ...] = (
            self._read_rbr, self._read_ier, self._read_iir, self._read_lcr,
            self._read_mcr, self._read_lsr, self._read_msr, self._read_scr,
        )
        self._writes: Tuple[Callable[[int], None], ...] = (
            self._write_thr, self._write_ier, self._write_fcr, self._write_lcr,
            self._write_mcr, self._write_lsr, self._write_msr, self._write_scr,
        )
        self._irq_level = False
        self.reset()

    def reset(self) -> None:
        """Power-on state; host input not yet delivered is kept."""
        with self._lock:
            self._dll = 0x0C  # 9600 baud, the PC BIOS default
            self._dlm = 0
            self._ier = 0
            self._lcr = 0
            # OUT2 starts set, as under QEMU: guests written against QEMU, which ignores OUT2,
            # get their interrupts without touching MCR; a guest that clears it is obeyed.
            self._mcr = MCR_OUT2
            self._scr = 0
            self._line_errors = 0
            self._msr_deltas = 0
            self._fifo_enabled = False
            self._rx_trigger = 1
            self._rx.clear()
            self._rbr = 0
            self._thr_interrupt = False
            self._update_irq()

    # --- bus Device protocol --------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            return self._reads[offset & 7]()

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._writes[offset & 7](value & 0xFF)

    # --- host side --------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Queue bytes from the host for the guest; safe to call from any thread."""
        with self._lock:
            while len(self._backlog) >= BACKLOG_LIMIT:
                self._backlog_drained.wait(0.5)
            self._backlog += data
            self._refill_rx()
            self._update_irq()

    @property
    def pending_input(self) -> int:
        """Host bytes not yet in the receive FIFO."""
        with self._lock:
            return len(self._backlog)

    @property
    def divisor(self) -> int:
        with self._lock:
            return (self._dlm << 8) | self._dll

    @property
    def baud_rate(self) -> float:
        divisor = self.divisor
        return BASE_BAUD / divisor if divisor else 0.0

    @property
    def irq_level(self) -> bool:
        return self._irq_level

    # --- interrupt logic -----------------------------------------------------------------
    def _pending_interrupt(self) -> int:
        """The IIR interrupt ID, highest priority first as in the 16550A datasheet."""
        ier = self._ier
        if ier & IER_RLSI and self._line_errors:
            return IIR_LINE_STATUS
        if ier & IER_RDI and self._rx:
            if self._fifo_enabled and len(self._rx) < self._rx_trigger:
                return IIR_RX_TIMEOUT
            return IIR_RX_DATA
        if ier & IER_THRI and self._thr_interrupt:
            return IIR_THR_EMPTY
        if ier & IER_MSI and self._msr_deltas:
            return IIR_MODEM_STATUS
        return IIR_NO_INTERRUPT

    def _update_irq(self) -> None:
        # The PC wires INTR to the ISA line through a buffer enabled by the OUT2 pin, and
        # loopback mode disconnects that pin, so both gate the line.
        gated_on = (self._mcr & (MCR_OUT2 | MCR_LOOP)) == MCR_OUT2
        level = gated_on and self._pending_interrupt() != IIR_NO_INTERRUPT
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)

    # --- receive path ----------------------------------------------------------------------
    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self._fifo_enabled else 1

    def _refill_rx(self) -> None:
        if self._mcr & MCR_LOOP or not self._backlog:
            return  # in loopback the serial input pin is disconnected; host bytes wait
        room = self._rx_capacity() - len(self._rx)
        if room > 0:
            self._rx.extend(self._backlog[:room])
            del self._backlog[:room]
            if len(self._backlog) < BACKLOG_LIMIT:
                self._backlog_drained.notify_all()

    def _loopback_receive(self, byte: int) -> None:
        if len(self._rx) < self._rx_capacity():
            self._rx.append(byte)
        elif self._fifo_enabled:
            self._line_errors |= LSR_OE  # the FIFO keeps its bytes; the new one is lost
        else:
            self._rx[0] = byte  # a 16450-style holding register is overwritten
            self._line_errors |= LSR_OE

    # --- register reads ----------------------------------------------------------------------
    def _read_rbr(self) -> int:
        if self._lcr & LCR_DLAB:
            return self._dll
        if self._rx:
            self._rbr = self._rx.popleft()
            self._refill_rx()
            self._update_irq()
        return self._rbr

    def _read_ier(self) -> int:
        return self._dlm if self._lcr & LCR_DLAB else self._ier

    def _read_iir(self) -> int:
        interrupt = self._pending_interrupt()
        if interrupt == IIR_THR_EMPTY:
            # Reading IIR while it reports THR empty is what acknowledges that interrupt.
            self._thr_interrupt = False
            self._update_irq()
        return interrupt | (IIR_FIFOS_ENABLED if self._fifo_enabled else 0)

    def _read_lcr(self) -> int:
        return self._lcr

    def _read_mcr(self) -> int:
        return self._mcr

    def _read_lsr(self) -> int:
        value = self._line_errors | LSR_THRE | LSR_TEMT
        if self._rx:
            value |= LSR_DR
        if self._line_errors:
            self._line_errors = 0
            self._update_irq()
        return value

    def _modem_lines(self) -> int:
        mcr = self._mcr
        if not mcr & MCR_LOOP:
            return MSR_IDLE_LINES
        lines = 0
        if mcr & MCR_RTS:
            lines |= MSR_CTS
        if mcr & MCR_DTR:
            lines |= MSR_DSR
        if mcr & MCR_OUT1:
            lines |= MSR_RI
        if mcr & MCR_OUT2:
            lines |= MSR_DCD
        return lines

    def _read_msr(self) -> int:
        value = self._modem_lines() | self._msr_deltas
        if self._msr_deltas:
            self._msr_deltas = 0
            self._update_irq()
        return value

    def _read_scr(self) -> int:
        return self._scr

    # --- register writes ---------------------------------------------------------------------
    def _write_thr(self, value: int) -> None:
        if self._lcr & LCR_DLAB:
            self._dll = value
            return
        if self._mcr & MCR_LOOP:
            self._loopback_receive(value)
        elif self._output is not None:
            self._output.write(bytes((value,)))
        self._thr_interrupt = True  # sent at once: THR is empty again
        self._update_irq()

    def _write_ier(self, value: int) -> None:
        if self._lcr & LCR_DLAB:
            self._dlm = value
            return
        enabling_thri = value & IER_THRI and not self._ier & IER_THRI
        self._ier = value & IER_MASK
        if enabling_thri:
            # Enabling ETBEI while THR is empty raises the interrupt at once; Linux's 8250
            # driver starts transmission this way and tests it at start-up (UART_BUG_THRE).
            self._thr_interrupt = True
        elif not value & IER_THRI:
            self._thr_interrupt = False
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE_FIFO)
        if enable != self._fifo_enabled:
            self._rx.clear()  # switching the FIFO mode resets both FIFOs
            self._fifo_enabled = enable
        if enable:
            if value & FCR_CLEAR_RX:
                self._rx.clear()
            self._rx_trigger = RX_TRIGGER_LEVELS[value >> FCR_TRIGGER_SHIFT]
        # FCR_CLEAR_TX: the transmit FIFO is always empty here.
        self._refill_rx()
        self._update_irq()

    def _write_lcr(self, value: int) -> None:
        self._lcr = value

    def _write_mcr(self, value: int) -> None:
        before = self._modem_lines()
        self._mcr = value & MCR_MASK
        after = self._modem_lines()
        changed = before ^ after
        if changed & MSR_CTS:
            self._msr_deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self._msr_deltas |= MSR_DDSR
        if before & MSR_RI and not after & MSR_RI:
            self._msr_deltas |= MSR_TERI  # trailing edge only
        if changed & MSR_DCD:
            self._msr_deltas |= MSR_DDCD
        self._refill_rx()
        self._update_irq()

    def _write_lsr(self, value: int) -> None:
        pass  # LSR is read-only (factory test mode not emulated)

    def _write_msr(self, value: int) -> None:
        pass  # MSR is read-only

    def _write_scr(self, value: int) -> None:
        self._scr = value

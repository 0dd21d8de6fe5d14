"""The 16550A UART, driven through its registers the way Linux's 8250 driver and polling guests do."""

from __future__ import annotations

import threading

import pytest

from pyhv.bus import Bus
from pyhv.chardev import BufferBackend
from pyhv.devices import serial as uart
from pyhv.devices.serial import Serial
from pyhv.irq import RecordingIrqLine

COM1 = 0x3F8


@pytest.fixture
def irq() -> RecordingIrqLine:
    return RecordingIrqLine()


@pytest.fixture
def console() -> BufferBackend:
    return BufferBackend()


@pytest.fixture
def port(irq: RecordingIrqLine, console: BufferBackend) -> Serial:
    device = Serial(irq, console)
    console.start(device.receive)
    return device


def iir(port: Serial) -> int:
    return port.read(uart.IIR_FCR, 1)


def test_transmit_goes_to_backend_and_leaves_thr_empty(port: Serial, console: BufferBackend) -> None:
    bus = Bus("pio")
    bus.attach(COM1, uart.REGISTER_COUNT, port)
    for byte in b"Linux version\r\n":
        assert bus.read(COM1 + uart.LSR, 1) & uart.LSR_THRE  # a polling guest's wait loop
        bus.write(COM1 + uart.RBR_THR, 1, byte)
    assert console.output == b"Linux version\r\n"
    assert bus.read(COM1 + uart.LSR, 1) == uart.LSR_THRE | uart.LSR_TEMT


def test_divisor_latch_hides_rbr_thr_and_ier(port: Serial, console: BufferBackend) -> None:
    port.write(uart.IER, 1, uart.IER_RDI)
    port.write(uart.LCR, 1, uart.LCR_DLAB | 0x03)
    port.write(uart.RBR_THR, 1, 0x01)  # DLL
    port.write(uart.IER, 1, 0x00)  # DLM
    assert port.read(uart.RBR_THR, 1) == 0x01
    assert port.read(uart.IER, 1) == 0x00
    assert port.divisor == 1 and port.baud_rate == 115200
    port.write(uart.LCR, 1, 0x03)
    assert port.read(uart.IER, 1) == uart.IER_RDI  # the real IER survived
    port.write(uart.RBR_THR, 1, ord("A"))
    assert console.output == b"A"
    port.write(uart.LCR, 1, uart.LCR_DLAB)
    port.write(uart.RBR_THR, 1, 0x0C)
    port.write(uart.IER, 1, 0x00)
    assert port.baud_rate == 9600


def test_thre_interrupt_armed_on_ier_rising_edge_and_cleared_by_iir_read(
        port: Serial, irq: RecordingIrqLine) -> None:
    port.write(uart.MCR, 1, uart.MCR_OUT2)
    assert iir(port) == uart.IIR_NO_INTERRUPT
    port.write(uart.IER, 1, uart.IER_THRI)
    assert irq.level
    assert iir(port) == uart.IIR_THR_EMPTY  # the read acknowledges it
    assert iir(port) == uart.IIR_NO_INTERRUPT
    assert not irq.level
    port.write(uart.IER, 1, uart.IER_THRI)  # no rising edge: nothing new
    assert iir(port) == uart.IIR_NO_INTERRUPT
    # Linux's UART_BUG_THRE probe: clear ETBEI, set it again, expect the interrupt back.
    port.write(uart.IER, 1, 0)
    port.write(uart.IER, 1, uart.IER_THRI)
    assert iir(port) == uart.IIR_THR_EMPTY
    port.write(uart.RBR_THR, 1, ord("x"))  # every transmitted byte re-arms it
    assert irq.level and iir(port) == uart.IIR_THR_EMPTY
    assert irq.history == [True, False, True, False, True, False]


def test_out2_gates_the_irq_line(port: Serial, console: BufferBackend, irq: RecordingIrqLine) -> None:
    assert port.read(uart.MCR, 1) == uart.MCR_OUT2  # QEMU's power-on value
    port.write(uart.MCR, 1, 0)
    port.write(uart.IER, 1, uart.IER_RDI)
    console.feed(b"k")
    assert iir(port) == uart.IIR_RX_DATA
    assert not irq.level and irq.history == []
    port.write(uart.MCR, 1, uart.MCR_OUT2 | uart.MCR_DTR | uart.MCR_RTS)
    assert irq.level
    port.write(uart.MCR, 1, uart.MCR_DTR)
    assert not irq.level


def test_receive_without_fifo_one_byte_at_a_time(port: Serial, console: BufferBackend,
                                                  irq: RecordingIrqLine) -> None:
    port.write(uart.MCR, 1, uart.MCR_OUT2)
    port.write(uart.IER, 1, uart.IER_RDI)
    console.feed(b"ok\n")
    assert irq.level
    assert iir(port) == uart.IIR_RX_DATA  # no 0xC0: FIFOs are off
    assert port.pending_input == 2  # one holding register; the rest waits on the host side
    received = bytearray()
    while port.read(uart.LSR, 1) & uart.LSR_DR:
        received.append(port.read(uart.RBR_THR, 1))
    assert received == b"ok\n"
    assert not irq.level and iir(port) == uart.IIR_NO_INTERRUPT
    assert port.read(uart.LSR, 1) & uart.LSR_OE == 0  # host input never overruns


@pytest.mark.parametrize("fcr_trigger,level", [(0x00, 1), (0x40, 4), (0x80, 8), (0xC0, 14)])
def test_fifo_trigger_levels(port: Serial, console: BufferBackend, fcr_trigger: int, level: int) -> None:
    port.write(uart.MCR, 1, uart.MCR_OUT2)
    port.write(uart.IIR_FCR, 1, uart.FCR_ENABLE_FIFO | uart.FCR_CLEAR_RX | fcr_trigger)
    port.write(uart.IER, 1, uart.IER_RDI)
    if level > 1:
        console.feed(b"x" * (level - 1))
        assert iir(port) == uart.IIR_FIFOS_ENABLED | uart.IIR_RX_TIMEOUT
    console.feed(b"y")
    assert iir(port) == uart.IIR_FIFOS_ENABLED | uart.IIR_RX_DATA
    port.read(uart.RBR_THR, 1)
    expected = uart.IIR_RX_TIMEOUT if level > 1 else uart.IIR_NO_INTERRUPT
    assert iir(port) == uart.IIR_FIFOS_ENABLED | expected


def test_fifo_holds_sixteen_and_host_backlog_refills_in_order(port: Serial, console: BufferBackend) -> None:
    port.write(uart.IIR_FCR, 1, uart.FCR_ENABLE_FIFO)
    data = bytes(range(40))
    console.feed(data)
    assert port.pending_input == 40 - uart.FIFO_SIZE
    received = bytearray()
    while port.read(uart.LSR, 1) & uart.LSR_DR:
        received.append(port.read(uart.RBR_THR, 1))
    assert bytes(received) == data and port.pending_input == 0


def test_fcr_clear_drops_fifo_contents_but_keeps_host_backlog(port: Serial, console: BufferBackend) -> None:
    port.write(uart.IIR_FCR, 1, uart.FCR_ENABLE_FIFO)
    console.feed(bytes(range(20)))
    port.write(uart.IIR_FCR, 1, uart.FCR_ENABLE_FIFO | uart.FCR_CLEAR_RX | uart.FCR_CLEAR_TX)
    assert port.read(uart.RBR_THR, 1) == 16


def test_loopback_echoes_internally_and_maps_modem_lines(port: Serial, console: BufferBackend) -> None:
    # Linux's autoconfig: loopback with RTS and OUT2 must read back CTS and DCD.
    port.write(uart.MCR, 1, uart.MCR_LOOP | uart.MCR_RTS | uart.MCR_OUT2)
    assert port.read(uart.MSR, 1) & 0xF0 == uart.MSR_CTS | uart.MSR_DCD
    port.write(uart.MCR, 1, uart.MCR_LOOP | uart.MCR_DTR | uart.MCR_OUT1)
    assert port.read(uart.MSR, 1) & 0xF0 == uart.MSR_DSR | uart.MSR_RI
    port.write(uart.RBR_THR, 1, 0x5A)
    assert console.output == b""
    assert port.read(uart.LSR, 1) & uart.LSR_DR
    assert port.read(uart.RBR_THR, 1) == 0x5A
    port.write(uart.MCR, 1, 0)
    assert port.read(uart.MSR, 1) & 0xF0 == uart.MSR_IDLE_LINES


def test_host_input_waits_while_in_loopback(port: Serial, console: BufferBackend) -> None:
    port.write(uart.MCR, 1, uart.MCR_LOOP)
    console.feed(b"h")
    assert not port.read(uart.LSR, 1) & uart.LSR_DR
    port.write(uart.MCR, 1, 0)
    assert port.read(uart.RBR_THR, 1) == ord("h")


def test_loopback_overrun_sets_oe_and_line_status_interrupt_wins(port: Serial) -> None:
    port.write(uart.IIR_FCR, 1, uart.FCR_ENABLE_FIFO)
    port.write(uart.MCR, 1, uart.MCR_LOOP)
    port.write(uart.IER, 1, uart.IER_RDI | uart.IER_RLSI | uart.IER_THRI)
    for byte in range(uart.FIFO_SIZE + 1):
        port.write(uart.RBR_THR, 1, byte)
    assert iir(port) & 0x0F == uart.IIR_LINE_STATUS
    lsr = port.read(uart.LSR, 1)
    assert lsr & uart.LSR_OE and lsr & uart.LSR_DR
    assert port.read(uart.LSR, 1) & uart.LSR_OE == 0  # reading LSR clears the error
    assert iir(port) & 0x0F == uart.IIR_RX_DATA  # next in priority
    received = [port.read(uart.RBR_THR, 1) for _ in range(uart.FIFO_SIZE)]
    assert received == list(range(uart.FIFO_SIZE))  # the 17th byte was the one lost
    assert iir(port) & 0x0F == uart.IIR_THR_EMPTY


def test_non_fifo_overrun_overwrites_holding_register(port: Serial) -> None:
    port.write(uart.MCR, 1, uart.MCR_LOOP)
    port.write(uart.RBR_THR, 1, 1)
    port.write(uart.RBR_THR, 1, 2)
    assert port.read(uart.LSR, 1) & uart.LSR_OE
    assert port.read(uart.RBR_THR, 1) == 2


def test_modem_status_interrupt_is_lowest_priority_and_cleared_by_msr_read(port: Serial) -> None:
    port.write(uart.MCR, 1, uart.MCR_LOOP)
    port.write(uart.IER, 1, uart.IER_MSI | uart.IER_THRI)
    port.write(uart.MCR, 1, uart.MCR_LOOP | uart.MCR_RTS)
    assert iir(port) == uart.IIR_THR_EMPTY
    assert iir(port) == uart.IIR_MODEM_STATUS
    msr = port.read(uart.MSR, 1)
    assert msr & uart.MSR_DCTS and msr & uart.MSR_CTS
    assert iir(port) == uart.IIR_NO_INTERRUPT
    port.write(uart.MCR, 1, uart.MCR_LOOP | uart.MCR_OUT1)
    port.write(uart.MCR, 1, uart.MCR_LOOP)  # RI falls: trailing-edge indicator
    assert port.read(uart.MSR, 1) & uart.MSR_TERI


def test_linux_autoconfig_probe_sees_a_16550a(port: Serial) -> None:
    port.write(uart.IER, 1, 0)
    assert port.read(uart.IER, 1) == 0
    port.write(uart.IER, 1, 0xFF)
    assert port.read(uart.IER, 1) == 0x0F  # upper nibble reads as zero
    port.write(uart.IER, 1, 0)
    port.write(uart.SCR, 1, 0xA5)
    assert port.read(uart.SCR, 1) == 0xA5
    port.write(uart.IIR_FCR, 1, uart.FCR_ENABLE_FIFO)
    assert iir(port) >> 6 == 3  # 16550A, FIFO working
    port.write(uart.LCR, 1, 0xBF)  # EFR probe of 16650-class chips must fail
    assert port.read(uart.IIR_FCR, 1) != 0
    port.write(uart.LCR, 1, uart.LCR_DLAB)
    port.write(uart.IIR_FCR, 1, uart.FCR_ENABLE_FIFO | 0x20)  # 16750 64-byte FIFO bit
    assert iir(port) >> 5 == 6  # no 64-byte FIFO: not a 16750
    port.write(uart.LCR, 1, 0x03)
    assert iir(port) >> 5 == 6


def test_reset_restores_power_on_registers(port: Serial, irq: RecordingIrqLine) -> None:
    port.write(uart.MCR, 1, uart.MCR_OUT2)
    port.write(uart.IER, 1, uart.IER_THRI)
    port.write(uart.IIR_FCR, 1, uart.FCR_ENABLE_FIFO)
    port.reset()
    assert not irq.level
    assert port.read(uart.IER, 1) == 0 and port.read(uart.MCR, 1) == uart.MCR_OUT2
    assert iir(port) == uart.IIR_NO_INTERRUPT


def test_receive_from_another_thread_while_guest_polls(port: Serial, console: BufferBackend) -> None:
    port.write(uart.IIR_FCR, 1, uart.FCR_ENABLE_FIFO)
    data = bytes(i & 0xFF for i in range(3000))

    def type_slowly() -> None:
        for i in range(0, len(data), 7):
            console.feed(data[i:i + 7])

    typist = threading.Thread(target=type_slowly)
    typist.start()
    received = bytearray()
    while len(received) < len(data) and (typist.is_alive() or port.read(uart.LSR, 1) & uart.LSR_DR):
        if port.read(uart.LSR, 1) & uart.LSR_DR:
            received.append(port.read(uart.RBR_THR, 1))
    typist.join()
    assert bytes(received) == data

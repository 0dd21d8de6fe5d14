"""The i8042 PS/2 controller, probed as Linux's i8042 and atkbd drivers do, and its reset line."""

from __future__ import annotations

from typing import List

import pytest

from pyhv.bus import Bus
from pyhv.devices import i8042 as kbc
from pyhv.devices.i8042 import I8042
from pyhv.irq import RecordingIrqLine
from pyhv.lifecycle import Lifecycle, Reset

DATA, COMMAND = 0x60, 0x64


class Machine:
    def __init__(self) -> None:
        self.lifecycle = Lifecycle()
        self.kbd_irq = RecordingIrqLine()
        self.aux_irq = RecordingIrqLine()
        self.controller = I8042(self.lifecycle, self.kbd_irq, self.aux_irq)
        self.bus = Bus("pio")
        self.bus.attach(DATA, 1, self.controller.data_port)
        self.bus.attach(COMMAND, 1, self.controller.command_port)

    def status(self) -> int:
        return self.bus.read(COMMAND, 1)

    def command(self, value: int) -> None:
        assert not self.status() & kbc.STATUS_INPUT_FULL  # what every driver waits for
        self.bus.write(COMMAND, 1, value)

    def send(self, value: int) -> None:
        self.bus.write(DATA, 1, value)

    def drain(self) -> List[int]:
        received = []
        while self.status() & kbc.STATUS_OUTPUT_FULL:
            received.append(self.bus.read(DATA, 1))
        return received


@pytest.fixture
def m() -> Machine:
    return Machine()


def test_self_test_answers_0x55_and_sets_system_flag(m: Machine) -> None:
    assert m.status() & kbc.STATUS_SYSTEM_FLAG == 0
    m.command(kbc.CMD_SELF_TEST)
    assert m.status() & kbc.STATUS_OUTPUT_FULL
    assert m.drain() == [kbc.SELF_TEST_PASSED]
    assert m.status() & kbc.STATUS_SYSTEM_FLAG


def test_port_0x61_is_left_to_the_system_control_port(m: Machine) -> None:
    assert m.bus.find(0x61) is None


def test_command_byte_read_and_write(m: Machine) -> None:
    m.command(kbc.CMD_READ_CCB)
    assert m.drain() == [kbc.CCB_KBD_INTERRUPT | kbc.CCB_AUX_INTERRUPT | kbc.CCB_TRANSLATE]
    m.command(kbc.CMD_WRITE_CCB)
    m.send(0x47)
    m.command(kbc.CMD_READ_CCB)
    assert m.drain() == [0x47]


@pytest.mark.parametrize("test_command", [kbc.CMD_TEST_KBD, kbc.CMD_TEST_AUX])
def test_interface_tests_pass(m: Machine, test_command: int) -> None:
    m.command(test_command)
    assert m.drain() == [kbc.INTERFACE_TEST_PASSED]


def test_command_0xfe_pulses_the_reset_line(m: Machine) -> None:
    m.command(0xFF)  # pulses nothing
    assert m.lifecycle.pending is None
    m.command(0xFE)
    assert m.lifecycle.pending == Reset("i8042 reset")


def test_output_port_write_with_bit0_low_resets(m: Machine) -> None:
    m.command(kbc.CMD_WRITE_OUTPUT_PORT)
    m.send(0xCD)  # A20 off, reset line released
    assert m.lifecycle.pending is None and not m.controller.a20_enabled
    m.command(kbc.CMD_READ_OUTPUT_PORT)
    assert m.drain() == [0xCD]  # buffer empty when the value was taken
    m.command(kbc.CMD_ENABLE_A20)
    assert m.controller.a20_enabled
    m.command(kbc.CMD_WRITE_OUTPUT_PORT)
    m.send(0xCE)
    assert isinstance(m.lifecycle.pending, Reset)


def test_keyboard_identifies_itself_and_raises_irq1(m: Machine) -> None:
    m.send(kbc.KBD_CMD_GET_ID)
    assert m.kbd_irq.level and not m.aux_irq.level
    assert m.drain() == [kbc.KBD_ACK, 0xAB, 0x41]  # translated ID, as atkbd expects
    assert not m.kbd_irq.level
    m.command(kbc.CMD_WRITE_CCB)
    m.send(kbc.CCB_KBD_INTERRUPT)  # translation off
    m.send(kbc.KBD_CMD_GET_ID)
    assert m.drain() == [kbc.KBD_ACK, 0xAB, 0x83]


def test_keyboard_reset_parameters_and_unknown_commands(m: Machine) -> None:
    m.send(kbc.KBD_CMD_RESET)
    assert m.drain() == [kbc.KBD_ACK, kbc.KBD_BAT_PASSED]
    m.send(kbc.KBD_CMD_SET_LEDS)
    m.send(0x07)
    assert m.drain() == [kbc.KBD_ACK, kbc.KBD_ACK]
    m.send(kbc.KBD_CMD_SCANCODE_SET)
    m.send(0)
    assert m.drain() == [kbc.KBD_ACK, kbc.KBD_ACK, 2]
    m.send(kbc.KBD_CMD_ECHO)
    assert m.drain() == [kbc.KBD_ECHO]
    m.send(0x42)
    assert m.drain() == [kbc.KBD_RESEND]


def test_disabled_keyboard_holds_its_bytes(m: Machine) -> None:
    m.send(0xF4)  # enable scanning: ACK queued
    m.command(kbc.CMD_DISABLE_KBD)
    assert not m.status() & kbc.STATUS_OUTPUT_FULL
    assert not m.kbd_irq.level
    m.command(kbc.CMD_ENABLE_KBD)
    assert m.drain() == [kbc.KBD_ACK]


def test_kbd_irq_needs_the_command_byte_enable(m: Machine) -> None:
    m.command(kbc.CMD_WRITE_CCB)
    m.send(0)
    m.send(kbc.KBD_CMD_ECHO)
    assert m.status() & kbc.STATUS_OUTPUT_FULL and not m.kbd_irq.level


def test_aux_loopback_comes_back_as_mouse_data_on_irq12(m: Machine) -> None:
    m.command(kbc.CMD_WRITE_AUX_BUFFER)
    m.send(0x5A)
    assert m.status() & kbc.STATUS_AUX_DATA
    assert m.aux_irq.level and not m.kbd_irq.level
    assert m.drain() == [0x5A]
    assert not m.aux_irq.level


def test_no_mouse_answers_resend_at_once(m: Machine) -> None:
    m.command(kbc.CMD_WRITE_AUX)
    m.send(0xFF)
    assert m.status() & kbc.STATUS_AUX_DATA
    assert m.drain() == [kbc.KBD_RESEND]


def test_status_tracks_last_port_written(m: Machine) -> None:
    m.command(kbc.CMD_ENABLE_AUX)
    assert m.status() & kbc.STATUS_LAST_WAS_COMMAND
    m.send(kbc.KBD_CMD_ECHO)
    assert not m.status() & kbc.STATUS_LAST_WAS_COMMAND


def test_empty_buffer_rereads_last_byte(m: Machine) -> None:
    m.command(kbc.CMD_SELF_TEST)
    m.drain()
    assert m.bus.read(DATA, 1) == kbc.SELF_TEST_PASSED

"""The i8042 PS/2 controller: data port 0x60, status/command port 0x64, and the reset line.

Enough for what Linux's i8042 and atkbd drivers probe, and for the reboot path every x86 OS
knows (command 0xFE, or the output port with bit 0 low). Behind the keyboard port sits a
keyboard that answers commands (ACK, reset BAT, ID) but never has a key pressed; nothing is
behind the auxiliary port, so bytes sent to it get 0xFE back at once and a mouse probe
fails fast instead of waiting for a timeout.

Ports 0x60 and 0x64 are not contiguous (0x61 is the PC's system control port B), so the
machine attaches :attr:`I8042.data_port` at 0x60 and :attr:`I8042.command_port` at 0x64,
one port each.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Optional, Tuple

from ..irq import IrqLine
from ..lifecycle import Lifecycle

DATA_OFFSET = 0  # offsets as seen through I8042 itself when mapped at 0x60 with length 5
COMMAND_OFFSET = 4

STATUS_OUTPUT_FULL = 0x01
STATUS_INPUT_FULL = 0x02
STATUS_SYSTEM_FLAG = 0x04
STATUS_LAST_WAS_COMMAND = 0x08
STATUS_UNLOCKED = 0x10  # keyboard not inhibited by the key lock
STATUS_AUX_DATA = 0x20

CCB_KBD_INTERRUPT = 0x01
CCB_AUX_INTERRUPT = 0x02
CCB_SYSTEM_FLAG = 0x04
CCB_KBD_DISABLED = 0x10
CCB_AUX_DISABLED = 0x20
CCB_TRANSLATE = 0x40

OUTPUT_PORT_RESET = 0x01  # active low: 0 holds the CPU in reset
OUTPUT_PORT_A20 = 0x02
OUTPUT_PORT_KBD_FULL = 0x10
OUTPUT_PORT_AUX_FULL = 0x20
OUTPUT_PORT_DEFAULT = 0xCF  # reset released, A20 on, keyboard clock and data high

CMD_READ_CCB = 0x20
CMD_WRITE_CCB = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_TEST_AUX = 0xA9
CMD_SELF_TEST = 0xAA
CMD_TEST_KBD = 0xAB
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_READ_INPUT_PORT = 0xC0
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_WRITE_KBD_BUFFER = 0xD2
CMD_WRITE_AUX_BUFFER = 0xD3
CMD_WRITE_AUX = 0xD4
CMD_DISABLE_A20 = 0xDD
CMD_ENABLE_A20 = 0xDF
CMD_PULSE_FIRST = 0xF0  # 0xF0-0xFF pulse output-port bits low for each 0 in the low nibble

SELF_TEST_PASSED = 0x55
INTERFACE_TEST_PASSED = 0x00
INPUT_PORT_VALUE = 0x80  # keyboard not inhibited

KBD_ACK = 0xFA
KBD_RESEND = 0xFE
KBD_BAT_PASSED = 0xAA
KBD_ECHO = 0xEE
KBD_ID = (0xAB, 0x83)
KBD_ID_TRANSLATED = (0xAB, 0x41)
KBD_CMD_SET_LEDS = 0xED
KBD_CMD_ECHO = 0xEE
KBD_CMD_SCANCODE_SET = 0xF0
KBD_CMD_GET_ID = 0xF2
KBD_CMD_TYPEMATIC = 0xF3
KBD_CMD_RESET = 0xFF
# Commands with no parameter and no answer but an ACK (enable, disable, defaults, typematic modes).
KBD_CMDS_ACK_ONLY = frozenset(range(0xF4, 0xFF))
KBD_CMDS_WITH_PARAMETER = frozenset((KBD_CMD_SET_LEDS, KBD_CMD_SCANCODE_SET, KBD_CMD_TYPEMATIC))

# Who the next byte written to port 0x60 is for.
TO_KEYBOARD, TO_CCB, TO_OUTPUT_PORT, TO_KBD_BUFFER, TO_AUX_BUFFER, TO_AUX = range(6)
DATA_TARGETS = {
    CMD_WRITE_CCB: TO_CCB,
    CMD_WRITE_OUTPUT_PORT: TO_OUTPUT_PORT,
    CMD_WRITE_KBD_BUFFER: TO_KBD_BUFFER,
    CMD_WRITE_AUX_BUFFER: TO_AUX_BUFFER,
    CMD_WRITE_AUX: TO_AUX,
}


class _Port:
    """One of the controller's two I/O ports, as a bus device of length 1."""

    def __init__(self, controller: "I8042", offset: int) -> None:
        self._controller = controller
        self._offset = offset

    def read(self, offset: int, size: int) -> int:
        return self._controller.read(self._offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._controller.write(self._offset, size, value)


class I8042:
    """The PS/2 controller with a keyboard that never types."""

    def __init__(self, lifecycle: Lifecycle, kbd_irq: Optional[IrqLine] = None,
                 aux_irq: Optional[IrqLine] = None) -> None:
        self._lifecycle = lifecycle
        self._kbd_irq = kbd_irq
        self._aux_irq = aux_irq
        self.data_port = _Port(self, DATA_OFFSET)
        self.command_port = _Port(self, COMMAND_OFFSET)
        # Bytes the controller itself puts in the output buffer (command replies, 0xD2/0xD3
        # writes), tagged True when they must look like auxiliary-port data.
        self._controller_out: Deque[Tuple[int, bool]] = deque()
        self._kbd_out: Deque[int] = deque()
        self._aux_out: Deque[int] = deque()
        self._kbd_level = False
        self._aux_level = False
        self.reset()

    def reset(self) -> None:
        self.command_byte = CCB_KBD_INTERRUPT | CCB_AUX_INTERRUPT | CCB_TRANSLATE
        self.output_port = OUTPUT_PORT_DEFAULT
        self._status = STATUS_UNLOCKED
        self._controller_out.clear()
        self._kbd_out.clear()
        self._aux_out.clear()
        self._data_target = TO_KEYBOARD
        self._kbd_pending_command: Optional[int] = None
        self._last_data = 0
        self._update_irqs()

    @property
    def a20_enabled(self) -> bool:
        return bool(self.output_port & OUTPUT_PORT_A20)

    # --- bus Device protocol ----------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == COMMAND_OFFSET:
            return self._read_status()
        if offset == DATA_OFFSET:
            return self._read_data()
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == COMMAND_OFFSET:
            self._status |= STATUS_LAST_WAS_COMMAND
            self._command(value)
        elif offset == DATA_OFFSET:
            self._status &= ~STATUS_LAST_WAS_COMMAND
            self._data(value)

    # --- output buffer -------------------------------------------------------------------------
    def _output_head(self) -> Tuple[Optional[Deque], bool]:
        """The queue whose head is in the output buffer now, and whether it is aux data.

        A disabled port's device cannot send, but the controller's own bytes always can.
        """
        if self._controller_out:
            return self._controller_out, self._controller_out[0][1]
        if self._kbd_out and not self.command_byte & CCB_KBD_DISABLED:
            return self._kbd_out, False
        if self._aux_out and not self.command_byte & CCB_AUX_DISABLED:
            return self._aux_out, True
        return None, False

    def _read_status(self) -> int:
        status = self._status
        if self.command_byte & CCB_SYSTEM_FLAG:
            status |= STATUS_SYSTEM_FLAG
        source, is_aux = self._output_head()
        if source is not None:
            status |= STATUS_OUTPUT_FULL
            if is_aux:
                status |= STATUS_AUX_DATA
        return status

    def _read_data(self) -> int:
        source, _ = self._output_head()
        if source is self._controller_out:
            self._last_data = self._controller_out.popleft()[0]
        elif source is not None:
            self._last_data = source.popleft()
        if source is not None:
            self._update_irqs()
        return self._last_data  # an empty buffer still holds its last byte

    def _update_irqs(self) -> None:
        source, is_aux = self._output_head()
        ccb = self.command_byte
        kbd = source is not None and not is_aux and bool(ccb & CCB_KBD_INTERRUPT)
        aux = source is not None and is_aux and bool(ccb & CCB_AUX_INTERRUPT)
        if kbd != self._kbd_level:
            self._kbd_level = kbd
            if self._kbd_irq is not None:
                self._kbd_irq.set_level(kbd)
        if aux != self._aux_level:
            self._aux_level = aux
            if self._aux_irq is not None:
                self._aux_irq.set_level(aux)

    def _reply(self, value: int, as_aux: bool = False) -> None:
        self._controller_out.append((value, as_aux))
        self._update_irqs()

    # --- controller commands -------------------------------------------------------------------
    def _command(self, command: int) -> None:
        self._data_target = TO_KEYBOARD
        if command in DATA_TARGETS:
            self._data_target = DATA_TARGETS[command]
        elif command == CMD_READ_CCB:
            self._reply(self.command_byte)
        elif command == CMD_SELF_TEST:
            self.command_byte |= CCB_SYSTEM_FLAG
            self._reply(SELF_TEST_PASSED)
        elif command in (CMD_TEST_KBD, CMD_TEST_AUX):
            self._reply(INTERFACE_TEST_PASSED)
        elif command == CMD_DISABLE_KBD:
            self._set_command_byte(self.command_byte | CCB_KBD_DISABLED)
        elif command == CMD_ENABLE_KBD:
            self._set_command_byte(self.command_byte & ~CCB_KBD_DISABLED)
        elif command == CMD_DISABLE_AUX:
            self._set_command_byte(self.command_byte | CCB_AUX_DISABLED)
        elif command == CMD_ENABLE_AUX:
            self._set_command_byte(self.command_byte & ~CCB_AUX_DISABLED)
        elif command == CMD_READ_INPUT_PORT:
            self._reply(INPUT_PORT_VALUE)
        elif command == CMD_READ_OUTPUT_PORT:
            self._reply(self._output_port_value())
        elif command == CMD_DISABLE_A20:
            self.output_port &= ~OUTPUT_PORT_A20
        elif command == CMD_ENABLE_A20:
            self.output_port |= OUTPUT_PORT_A20
        elif command >= CMD_PULSE_FIRST:
            if not command & OUTPUT_PORT_RESET:
                self._lifecycle.reset("i8042 reset")
        # Other commands (vendor-specific, password, test-mode) are ignored, as on most chips.

    def _output_port_value(self) -> int:
        value = self.output_port & ~(OUTPUT_PORT_KBD_FULL | OUTPUT_PORT_AUX_FULL)
        source, is_aux = self._output_head()
        if source is not None:
            value |= OUTPUT_PORT_AUX_FULL if is_aux else OUTPUT_PORT_KBD_FULL
        return value

    def _set_command_byte(self, value: int) -> None:
        self.command_byte = value
        self._update_irqs()

    def _data(self, value: int) -> None:
        target = self._data_target
        self._data_target = TO_KEYBOARD
        if target == TO_KEYBOARD:
            # Writing to the keyboard enables its interface, as on a real controller.
            self.command_byte &= ~CCB_KBD_DISABLED
            self._keyboard_command(value)
        elif target == TO_CCB:
            self._set_command_byte(value)
        elif target == TO_OUTPUT_PORT:
            self.output_port = value
            if not value & OUTPUT_PORT_RESET:
                self._lifecycle.reset("i8042 reset")
        elif target == TO_KBD_BUFFER:
            self._controller_out.append((value, False))
        elif target == TO_AUX_BUFFER:
            self._controller_out.append((value, True))
        elif target == TO_AUX:
            self._aux_out.append(KBD_RESEND)  # no device on the auxiliary port
        else:  # pragma: no cover - DATA_TARGETS and this chain list the same targets
            raise AssertionError(f"i8042: unknown data target {target}")
        self._update_irqs()

    # --- the keyboard behind port 1 --------------------------------------------------------------
    def _keyboard_command(self, value: int) -> None:
        pending = self._kbd_pending_command
        if pending is not None:
            self._kbd_pending_command = None
            self._kbd_out.append(KBD_ACK)
            if pending == KBD_CMD_SCANCODE_SET and value == 0:
                self._kbd_out.append(2)  # the current set: always set 2
            return
        if value in KBD_CMDS_WITH_PARAMETER:
            self._kbd_pending_command = value
            self._kbd_out.append(KBD_ACK)
        elif value == KBD_CMD_RESET:
            self._kbd_out.extend((KBD_ACK, KBD_BAT_PASSED))
        elif value == KBD_CMD_GET_ID:
            self._kbd_out.append(KBD_ACK)
            translated = self.command_byte & CCB_TRANSLATE
            self._kbd_out.extend(KBD_ID_TRANSLATED if translated else KBD_ID)
        elif value == KBD_CMD_ECHO:
            self._kbd_out.append(KBD_ECHO)
        elif value in KBD_CMDS_ACK_ONLY:
            self._kbd_out.append(KBD_ACK)
        else:
            self._kbd_out.append(KBD_RESEND)

"""Differential test: the same register accesses on QEMU's 16550A (through qtest) and on ours.

Only sequences where both models follow the datasheet the same way are compared. Known,
deliberate differences are left out: QEMU raises the character-timeout interrupt from a
timer (ours at once), and QEMU sets no MSR delta bits in loopback (the datasheet does).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import List, Sequence, Tuple

import pytest

from pyhv.chardev import NullBackend
from pyhv.devices import serial as uart
from pyhv.devices.serial import Serial
from pyhv.irq import RecordingIrqLine

COM1 = 0x3F8
QEMU = shutil.which("qemu-system-x86_64")

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed (Debian qemu-system-x86)"),
]

Access = Tuple[str, int, int]  # ("in", offset, bits compared) or ("out", offset, value)


def IN(offset: int, compared_bits: int = 0xFF) -> Access:
    return ("in", offset, compared_bits)


def OUT(offset: int, value: int) -> Access:
    return ("out", offset, value)


def run_on_qemu(script: Sequence[Access]) -> List[int]:
    lines = []
    for kind, offset, value in script:
        if kind == "in":
            lines.append(f"inb {COM1 + offset:#x}")
        else:
            lines.append(f"outb {COM1 + offset:#x} {value:#x}")
    # qtest keeps QEMU running after stdin closes: read the replies, then stop it.
    qemu = subprocess.Popen(
        [QEMU, "-M", "pc", "-qtest", "stdio", "-display", "none", "-nodefaults", "-monitor", "none",
         "-chardev", "null,id=com1", "-device", "isa-serial,chardev=com1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert qemu.stdin is not None and qemu.stdout is not None
        qemu.stdin.write("\n".join(lines) + "\n")
        qemu.stdin.flush()
        replies: List[str] = []
        while len(replies) < len(script):
            line = qemu.stdout.readline()
            assert line, f"QEMU stopped after {len(replies)} replies"
            if line.startswith("OK"):
                replies.append(line)
            else:
                assert not line.startswith("FAIL"), line
    finally:
        qemu.kill()
        qemu.wait()
    return [int(reply.split()[1], 16) & bits for reply, (kind, _, bits) in zip(replies, script) if kind == "in"]


def run_on_pyhv(script: Sequence[Access]) -> List[int]:
    port = Serial(RecordingIrqLine(), NullBackend())
    values = []
    for kind, offset, value in script:
        if kind == "in":
            values.append(port.read(offset, 1) & value)
        else:
            port.write(offset, 1, value)
    return values


ALL_REGISTERS = [IN(offset) for offset in range(1, uart.REGISTER_COUNT)]

SCRIPTS = {
    "power-on": ALL_REGISTERS,
    "divisor latch": [
        OUT(uart.LCR, 0x83), OUT(0, 0x01), OUT(1, 0x00), IN(0), IN(1), IN(uart.LCR),
        OUT(uart.LCR, 0x03), OUT(1, 0x0F), IN(1), OUT(uart.LCR, 0x83), IN(0), IN(1),
    ],
    "scratch and IER mask": [OUT(uart.SCR, 0x5A), IN(uart.SCR), OUT(1, 0xFF), IN(1)],
    "THRE interrupt": [
        OUT(uart.MCR, 0x0B), IN(2), OUT(1, uart.IER_THRI), IN(2), IN(2),
        OUT(1, 0), IN(2), OUT(1, uart.IER_THRI), IN(2), OUT(0, 0x41), IN(2), IN(2), IN(uart.LSR),
    ],
    "FIFO identification": [
        OUT(2, 0x07), IN(2), OUT(uart.LCR, 0xBF), IN(2), OUT(uart.LCR, 0x80), OUT(2, 0x21), IN(2),
        OUT(uart.LCR, 0x03), IN(2), OUT(2, 0x00), IN(2),
    ],
    "loopback modem lines": [
        OUT(uart.MCR, 0x1A), IN(uart.MCR), IN(uart.MSR, 0xF0), OUT(uart.MCR, 0x00),
        IN(uart.MSR, 0xF0),
    ],
    "loopback receive without FIFO": [
        OUT(uart.MCR, 0x10), OUT(1, uart.IER_RDI), OUT(0, 0x61), IN(uart.LSR), IN(2), IN(0),
        IN(uart.LSR), IN(2),
    ],
    "loopback FIFO overrun": (
        [OUT(2, 0x07), OUT(uart.MCR, 0x10), OUT(1, uart.IER_RDI | uart.IER_RLSI)]
        + [OUT(0, byte) for byte in range(17)]
        + [IN(2), IN(uart.LSR), IN(uart.LSR), IN(2)]
        + [IN(0) for _ in range(16)] + [IN(uart.LSR), IN(2)]
    ),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_register_behaviour_matches_qemu(name: str) -> None:
    script = SCRIPTS[name]
    assert run_on_pyhv(script) == run_on_qemu(script)

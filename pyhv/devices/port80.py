"""The POST-code port (0x80): firmware and kernels write progress codes, or just delay.

Linux uses ``outb`` to 0x80 as an I/O delay, so this sink is hit often and does nothing
but remember the last value.
"""

from __future__ import annotations


class Port80:
    """A POST-code sink; attach it on the port bus at 0x80 with length 1."""

    def __init__(self) -> None:
        self.last_value = 0
        self.writes = 0

    def read(self, offset: int, size: int) -> int:
        return self.last_value & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.last_value = value & ((1 << (8 * size)) - 1)
        self.writes += 1

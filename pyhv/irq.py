"""Interrupt lines as devices see them.

A device raises or lowers a line; what is behind it (KVM_IRQ_LINE into the in-kernel
irqchip, or pyhv's own PIC/IOAPIC under the software CPU) is the accelerator's business.
"""

from __future__ import annotations

from typing import Callable, List

from typing import Protocol


class IrqLine(Protocol):
    def set_level(self, level: bool) -> None:
        """Drive the line high (True) or low (False)."""


class CallbackIrqLine:
    """An IRQ line that calls ``sink(gsi, level)`` on every change of level."""

    def __init__(self, gsi: int, sink: Callable[[int, bool], None]) -> None:
        self.gsi = gsi
        self._sink = sink
        self.level = False

    def set_level(self, level: bool) -> None:
        level = bool(level)
        if level != self.level:
            self.level = level
            self._sink(self.gsi, level)

    def pulse(self) -> None:
        """An edge for edge-triggered ISA devices."""
        self.set_level(True)
        self.set_level(False)


class RecordingIrqLine:
    """A line that remembers every level it was driven to (for tests)."""

    def __init__(self) -> None:
        self.level = False
        self.history: List[bool] = []

    def set_level(self, level: bool) -> None:
        self.level = bool(level)
        self.history.append(self.level)

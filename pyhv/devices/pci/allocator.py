"""Placing BARs before the guest runs, as firmware would: pyhv boots kernels directly, so
nobody else assigns addresses. Each BAR gets a naturally aligned range in the PCI windows,
and the function's command register gets memory and I/O decoding switched on; Linux then
claims the ranges as they are.

The memory window sits in the MMIO hole above the ECAM window and below the IOAPIC
(0xFEC00000); virtio-mmio devices use 0xD0000000 up, and RAM ends at 0xC0000000. The I/O
window is 0xC000-0xFFFF, where QEMU's SeaBIOS places I/O BARs too. The ACPI host bridge
_CRS must describe both windows.
"""

from __future__ import annotations

from .config import COMMAND_IO, COMMAND_MEMORY, COMMAND, Bar, PciError, PciFunction

PCI_MMIO_WINDOW_START = 0xE100_0000
PCI_MMIO_WINDOW_END = 0xFEC0_0000  # exclusive
PCI_IO_WINDOW_START = 0xC000
PCI_IO_WINDOW_END = 0x1_0000  # exclusive


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


class BarAllocator:
    """Bump allocation of BAR ranges in the memory and I/O windows."""

    def __init__(self, mmio_start: int = PCI_MMIO_WINDOW_START, mmio_end: int = PCI_MMIO_WINDOW_END,
                 io_start: int = PCI_IO_WINDOW_START, io_end: int = PCI_IO_WINDOW_END) -> None:
        self.mmio_next, self.mmio_end = mmio_start, mmio_end
        self.io_next, self.io_end = io_start, io_end

    def allocate(self, bar: Bar) -> int:
        if bar.is_io:
            base = _align_up(self.io_next, bar.size)
            if base + bar.size > self.io_end:
                raise PciError(f"no room for a {bar.size:#x}-byte I/O BAR below {self.io_end:#x}")
            self.io_next = base + bar.size
            return base
        base = _align_up(self.mmio_next, bar.size)
        if base + bar.size > self.mmio_end:
            raise PciError(f"no room for a {bar.size:#x}-byte memory BAR below {self.mmio_end:#x}")
        self.mmio_next = base + bar.size
        return base

    def assign(self, function: PciFunction) -> None:
        """Program every BAR of ``function`` (largest first, to waste less alignment) and
        enable decoding."""
        command = function.command
        for bar in sorted(function.bars.values(), key=lambda b: -b.size):
            function.set_bar_base(bar, self.allocate(bar))
            command |= COMMAND_IO if bar.is_io else COMMAND_MEMORY
        function.set_u16(COMMAND, command)
        function.mappings_changed(function)

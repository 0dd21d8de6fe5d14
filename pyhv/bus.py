"""Address-range dispatch for port I/O and MMIO.

A device sees offsets and values, never its base address or the accelerator that runs it.
One signature serves both buses (as in kvmtool): values are little-endian integers of
``size`` bytes (1, 2, 4 or 8).
"""

from __future__ import annotations

import bisect
from typing import List, Optional, Tuple

from typing import Protocol

from .errors import BusError


class Device(Protocol):
    """What a bus needs of a device."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class Bus:
    """Sorted, non-overlapping [base, base+length) ranges, each mapped to one device.

    Reads nobody claims return all-ones; writes nobody claims are counted and dropped,
    as on real hardware.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._bases: List[int] = []
        self._entries: List[Tuple[int, int, Device]] = []  # (base, end, device), sorted by base
        self.unclaimed_reads = 0
        self.unclaimed_writes = 0

    def attach(self, base: int, length: int, device: Device) -> None:
        if length <= 0 or base < 0:
            raise BusError(f"{self.name}: bad range {base:#x}+{length:#x}")
        end = base + length
        i = bisect.bisect_right(self._bases, base)
        if i > 0 and self._entries[i - 1][1] > base:
            other = self._entries[i - 1]
            raise BusError(
                f"{self.name}: {type(device).__name__} at {base:#x}-{end - 1:#x} overlaps "
                f"{type(other[2]).__name__} at {other[0]:#x}-{other[1] - 1:#x}"
            )
        if i < len(self._entries) and self._entries[i][0] < end:
            other = self._entries[i]
            raise BusError(
                f"{self.name}: {type(device).__name__} at {base:#x}-{end - 1:#x} overlaps "
                f"{type(other[2]).__name__} at {other[0]:#x}-{other[1] - 1:#x}"
            )
        self._bases.insert(i, base)
        self._entries.insert(i, (base, end, device))

    def detach(self, base: int) -> None:
        i = bisect.bisect_left(self._bases, base)
        if i == len(self._bases) or self._bases[i] != base:
            raise BusError(f"{self.name}: nothing attached at {base:#x}")
        del self._bases[i]
        del self._entries[i]

    def find(self, addr: int) -> Optional[Tuple[int, int, Device]]:
        """The (base, end, device) entry claiming ``addr``, or None."""
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            entry = self._entries[i]
            if addr < entry[1]:
                return entry
        return None

    def read(self, addr: int, size: int) -> int:
        entry = self.find(addr)
        if entry is None:
            self.unclaimed_reads += 1
            return (1 << (8 * size)) - 1
        return entry[2].read(addr - entry[0], size)

    def write(self, addr: int, size: int, value: int) -> None:
        entry = self.find(addr)
        if entry is None:
            self.unclaimed_writes += 1
            return
        entry[2].write(addr - entry[0], size, value)

    def devices(self) -> List[Tuple[int, int, Device]]:
        return list(self._entries)

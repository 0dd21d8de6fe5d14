"""MSI-X (PCI 3.0, 6.8.2): the capability, the vector table and the pending-bit array.

The table and the PBA share one memory BAR: the table at offset 0 (16 bytes per vector:
address low, address high, data, vector control) and the PBA after it, 8-byte aligned.
A vector fires only while MSI-X is enabled, the function is not masked and the vector's own
mask bit is clear; a vector signalled while masked sets its pending bit instead, and fires
(clearing the bit) as soon as it is unmasked.

Whoever runs the guest delivers the message: an :class:`MsiSink` (``sinks.py`` has the KVM
and APIC-bus ones). Table accesses the spec leaves undefined (not a naturally aligned dword
or qword, or past the table) read as zero and are dropped.
"""

from __future__ import annotations

import threading
from typing import List

from typing import Protocol

from .config import Bar, BarKind, PciError, PciFunction

CAP_ID_MSIX = 0x11
MAX_VECTORS = 2048

# Message control (capability offset 2).
CONTROL_TABLE_SIZE_MASK = 0x07FF
CONTROL_FUNCTION_MASK = 0x4000
CONTROL_ENABLE = 0x8000

ENTRY_SIZE = 16
ENTRY_ADDRESS_LOW = 0x0
ENTRY_ADDRESS_HIGH = 0x4
ENTRY_DATA = 0x8
ENTRY_VECTOR_CONTROL = 0xC
VECTOR_MASKED = 0x1

NO_VECTOR = 0xFFFF


class MsiSink(Protocol):
    """What delivers a message-signalled interrupt: a write of ``data`` to ``address``."""

    def send_msi(self, address: int, data: int) -> None: ...


def _pow2_at_least(value: int, minimum: int) -> int:
    size = minimum
    while size < value:
        size <<= 1
    return size


class MsixVectors:
    """The vector table, PBA and enable state of one function; also the BAR's bus Device."""

    def __init__(self, vector_count: int, sink: MsiSink) -> None:
        if not 1 <= vector_count <= MAX_VECTORS:
            raise PciError(f"MSI-X vector count {vector_count} is not between 1 and {MAX_VECTORS}")
        self.vector_count = vector_count
        self.sink = sink
        self.table = bytearray(ENTRY_SIZE * vector_count)
        self.pending: List[bool] = [False] * vector_count
        self.pba_offset = (len(self.table) + 7) & ~7
        self.pba_size = ((vector_count + 63) // 64) * 8
        self.bar_size = _pow2_at_least(self.pba_offset + self.pba_size, 0x1000)
        self.enabled = False
        self.function_masked = False
        self.cap_offset = 0
        self._function: PciFunction = None  # type: ignore[assignment]
        self.lock = threading.RLock()
        self.reset_table()

    def reset_table(self) -> None:
        with self.lock:
            self.table[:] = bytes(len(self.table))
            for vector in range(self.vector_count):
                self.table[ENTRY_SIZE * vector + ENTRY_VECTOR_CONTROL] = VECTOR_MASKED
            self.pending = [False] * self.vector_count

    # --- plugging into a function -----------------------------------------------------------------
    def install(self, function: PciFunction, bar_index: int) -> Bar:
        """Add the capability and a 32-bit memory BAR ``bar_index`` holding table and PBA."""
        bar = function.add_bar(Bar(bar_index, BarKind.MEM32, self.bar_size, self))
        control = (self.vector_count - 1) & CONTROL_TABLE_SIZE_MASK
        body = (control.to_bytes(2, "little") + (0 | bar_index).to_bytes(4, "little")
                + (self.pba_offset | bar_index).to_bytes(4, "little"))
        writable = (CONTROL_FUNCTION_MASK | CONTROL_ENABLE).to_bytes(2, "little")
        self.cap_offset = function.add_capability(CAP_ID_MSIX, body, writable)
        function.add_config_hook(self.cap_offset + 2, 2, on_write=self._control_written)
        self._function = function
        return bar

    def _control_written(self, _offset: int, _size: int, _value: int) -> None:
        control = self._function.get(self.cap_offset + 2, 2)
        with self.lock:
            self.enabled = bool(control & CONTROL_ENABLE)
            self.function_masked = bool(control & CONTROL_FUNCTION_MASK)
            self._fire_unmasked_pending()

    # --- the device side ------------------------------------------------------------------------------
    def masked(self, vector: int) -> bool:
        return self.function_masked or bool(self.table[ENTRY_SIZE * vector + ENTRY_VECTOR_CONTROL] & VECTOR_MASKED)

    def message(self, vector: int):
        base = ENTRY_SIZE * vector
        low = int.from_bytes(self.table[base:base + 4], "little")
        high = int.from_bytes(self.table[base + 4:base + 8], "little")
        data = int.from_bytes(self.table[base + 8:base + 12], "little")
        return high << 32 | low, data

    def notify(self, vector: int) -> bool:
        """Signal ``vector``: sent, or left pending while masked. False when MSI-X is off or
        the vector does not exist (the caller falls back to INTx or drops it)."""
        with self.lock:
            if not self.enabled or not 0 <= vector < self.vector_count:
                return False
            if self.masked(vector):
                self.pending[vector] = True
            else:
                self.sink.send_msi(*self.message(vector))
            return True

    def _fire_unmasked_pending(self) -> None:
        if not self.enabled:
            return
        for vector, pending in enumerate(self.pending):
            if pending and not self.masked(vector):
                self.pending[vector] = False
                self.sink.send_msi(*self.message(vector))

    # --- the BAR (bus Device) ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if size not in (4, 8) or offset % size:
            return 0
        with self.lock:
            if offset + size <= len(self.table):
                return int.from_bytes(self.table[offset:offset + size], "little")
            if self.pba_offset <= offset and offset + size <= self.pba_offset + self.pba_size:
                first = (offset - self.pba_offset) * 8
                bits = 0
                for i in range(8 * size):
                    if first + i < self.vector_count and self.pending[first + i]:
                        bits |= 1 << i
                return bits
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (4, 8) or offset % size or offset + size > len(self.table):
            return  # the PBA is read-only; the rest of the BAR is reserved
        with self.lock:
            self.table[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            if (offset + size - 1) % ENTRY_SIZE >= ENTRY_VECTOR_CONTROL:
                self._fire_unmasked_pending()

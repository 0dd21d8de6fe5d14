"""A PCI function's type-0 configuration space (PCI Local Bus 3.0, 6.1-6.8).

256 bytes of header and capabilities, with a per-byte write mask (bits the guest may
change) and a write-one-to-clear mask (status bits), as QEMU keeps them. BARs follow the
sizing protocol for free: the address bits below the size are read-only zero, so a write
of all-ones reads back as the size mask with the type bits.

A function says nothing about where its BARs are mapped; the root bus it is plugged into
(``root.py``) decodes them whenever the guest writes a BAR or the command register, through
:attr:`PciFunction.mappings_changed`.
"""

from __future__ import annotations

import threading

from typing import Callable, Dict, List, NamedTuple, Optional

from ...bus import Device
from ...errors import BusError
from ...irq import IrqLine

# --- header offsets (type 0) -------------------------------------------------------------------
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BAR0 = 0x10
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D

CONFIG_SPACE_SIZE = 256
BAR_COUNT = 6
CAPABILITIES_START = 0x40

COMMAND_IO = 0x0001
COMMAND_MEMORY = 0x0002
COMMAND_MASTER = 0x0004
COMMAND_SERR = 0x0100
COMMAND_INTX_DISABLE = 0x0400
COMMAND_WRITABLE = COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_SERR | COMMAND_INTX_DISABLE

STATUS_INTERRUPT = 0x0008
STATUS_CAP_LIST = 0x0010
# Error bits the device would set and the guest clears by writing one (never set here).
STATUS_W1C = 0xF900

BAR_SPACE_IO = 0x1
BAR_MEM_TYPE_64 = 0x4
BAR_MEM_PREFETCH = 0x8

PIN_INTA = 1


class PciError(BusError):
    """A PCI device could not be placed: no free slot, no room for a BAR, a bad BAR shape."""


class BarKind:
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"


class Bar:
    """One base address register: its shape, the bus Device behind it, where it is mapped now."""

    def __init__(self, index: int, kind: str, size: int, region: Device, prefetchable: bool = False) -> None:
        if kind not in (BarKind.IO, BarKind.MEM32, BarKind.MEM64):
            raise PciError(f"BAR {index}: unknown kind {kind!r}")
        if not 0 <= index < BAR_COUNT or (kind == BarKind.MEM64 and index == BAR_COUNT - 1):
            raise PciError(f"BAR {index}: no such BAR for a {kind} region")
        minimum = 4 if kind == BarKind.IO else 16
        if size < minimum or size & (size - 1) or (kind == BarKind.IO and size > 256):
            raise PciError(f"BAR {index}: size {size:#x} is not a power of two from {minimum} "
                           f"({'up to 256 for I/O' if kind == BarKind.IO else 'bytes'})")
        self.index = index
        self.kind = kind
        self.size = size
        self.region = region
        self.prefetchable = prefetchable and kind != BarKind.IO
        self.address: Optional[int] = None  # the base it is decoded at, None when unmapped

    @property
    def is_io(self) -> bool:
        return self.kind == BarKind.IO

    @property
    def type_bits(self) -> int:
        if self.is_io:
            return BAR_SPACE_IO
        return (BAR_MEM_TYPE_64 if self.kind == BarKind.MEM64 else 0) | (BAR_MEM_PREFETCH if self.prefetchable else 0)


def _overlaps(start: int, end: int, other_start: int, other_end: int) -> bool:
    return start < other_end and other_start < end


ReadHook = Callable[[int, int], int]
WriteHook = Callable[[int, int, int], None]


class _Hook(NamedTuple):
    start: int
    end: int
    on_read: Optional[ReadHook]
    on_write: Optional[WriteHook]


class PciFunction:
    """One PCI function: its configuration space and BARs. Devices subclass or compose it."""

    def __init__(self, vendor_id: int, device_id: int, class_code: int, revision: int = 0,
                 subsystem_vendor_id: int = 0, subsystem_id: int = 0) -> None:
        self.config = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        self.w1cmask = bytearray(CONFIG_SPACE_SIZE)
        self.bars: Dict[int, Bar] = {}
        self._hooks: List[_Hook] = []
        self._cap_cursor = CAPABILITIES_START
        self._last_cap_next = CAPABILITY_LIST  # where the next capability's offset is linked
        self.intx: Optional[IrqLine] = None
        self.intx_level = False
        self._intx_lock = threading.RLock()
        # Set by the root bus when the function is plugged in.
        self.mappings_changed: Callable[["PciFunction"], None] = lambda function: None
        self.set_u16(VENDOR_ID, vendor_id)
        self.set_u16(DEVICE_ID, device_id)
        self.set_u32(REVISION_ID, (class_code & 0xFF_FFFF) << 8 | revision & 0xFF)
        self.set_u16(SUBSYSTEM_VENDOR_ID, subsystem_vendor_id)
        self.set_u16(SUBSYSTEM_ID, subsystem_id)
        self._set_wmask(COMMAND, 2, COMMAND_WRITABLE)
        self._set_w1cmask(STATUS, 2, STATUS_W1C)
        self._set_wmask(CACHE_LINE_SIZE, 1, 0xFF)
        self._set_wmask(LATENCY_TIMER, 1, 0xFF)
        self._set_wmask(INTERRUPT_LINE, 1, 0xFF)

    # --- raw field access (device side: ignores the masks) -------------------------------------
    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        self.config[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_u8(self, offset: int, value: int) -> None:
        self.set(offset, 1, value)

    def set_u16(self, offset: int, value: int) -> None:
        self.set(offset, 2, value)

    def set_u32(self, offset: int, value: int) -> None:
        self.set(offset, 4, value)

    def _set_wmask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset:offset + size] = mask.to_bytes(size, "little")

    def _set_w1cmask(self, offset: int, size: int, mask: int) -> None:
        self.w1cmask[offset:offset + size] = mask.to_bytes(size, "little")

    @property
    def vendor_id(self) -> int:
        return self.get(VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.get(DEVICE_ID, 2)

    @property
    def command(self) -> int:
        return self.get(COMMAND, 2)

    # --- BARs ---------------------------------------------------------------------------------
    def add_bar(self, bar: Bar) -> Bar:
        taken = set(self.bars)
        for other in self.bars.values():
            if other.kind == BarKind.MEM64:
                taken.add(other.index + 1)
        wanted = {bar.index, bar.index + 1} if bar.kind == BarKind.MEM64 else {bar.index}
        if wanted & taken:
            raise PciError(f"BAR {bar.index} overlaps a BAR already defined")
        self.bars[bar.index] = bar
        offset = BAR0 + 4 * bar.index
        self.set_u32(offset, bar.type_bits)
        size_mask = ~(bar.size - 1)
        self._set_wmask(offset, 4, size_mask & 0xFFFF_FFFF & ~bar.type_bits & ~(0x3 if bar.is_io else 0xF))
        if bar.kind == BarKind.MEM64:
            self.set_u32(offset + 4, 0)
            self._set_wmask(offset + 4, 4, (size_mask >> 32) & 0xFFFF_FFFF)
        return bar

    def bar_base(self, bar: Bar) -> int:
        """The base address the guest programmed into ``bar`` (decoded or not)."""
        offset = BAR0 + 4 * bar.index
        low = self.get(offset, 4)
        if bar.is_io:
            return low & ~0x3
        base = low & ~0xF
        if bar.kind == BarKind.MEM64:
            base |= self.get(offset + 4, 4) << 32
        return base

    def set_bar_base(self, bar: Bar, base: int) -> None:
        """Program ``bar`` as firmware would (the allocator, before the guest runs)."""
        offset = BAR0 + 4 * bar.index
        self.set_u32(offset, (base & 0xFFFF_FFFF & ~(bar.size - 1)) | bar.type_bits)
        if bar.kind == BarKind.MEM64:
            self.set_u32(offset + 4, base >> 32)

    def bar_decoded_at(self, bar: Bar) -> Optional[int]:
        """Where ``bar`` should be decoded now, or None: decoding is off in the command register,
        the BAR is zero, or it reaches past what its kind can address (the sizing pattern)."""
        command = self.command
        if not command & (COMMAND_IO if bar.is_io else COMMAND_MEMORY):
            return None
        base = self.bar_base(bar)
        last = base + bar.size - 1
        limit = {BarKind.IO: 0xFFFF, BarKind.MEM32: 0xFFFF_FFFF, BarKind.MEM64: (1 << 64) - 1}[bar.kind]
        if base == 0 or last >= limit:
            return None
        return base

    # --- capabilities ---------------------------------------------------------------------------
    def add_capability(self, cap_id: int, body: bytes, writable: bytes = b"") -> int:
        """Append a capability (its ID, the next pointer, then ``body``); its offset.
        ``writable`` is the write mask of ``body``'s bytes (read-only where it is short)."""
        offset = self._cap_cursor
        length = 2 + len(body)
        if offset + length > CONFIG_SPACE_SIZE:
            raise PciError(f"capability {cap_id:#x} of {length} bytes does not fit in config space")
        self.config[offset] = cap_id
        self.config[offset + 1] = 0
        self.config[offset + 2:offset + length] = body
        self.wmask[offset + 2:offset + 2 + len(writable)] = writable
        self.config[self._last_cap_next] = offset
        self._last_cap_next = offset + 1
        self._cap_cursor = (offset + length + 3) & ~3
        self.set_u16(STATUS, self.get(STATUS, 2) | STATUS_CAP_LIST)
        return offset

    def add_config_hook(self, start: int, length: int, on_read: Optional[ReadHook] = None,
                        on_write: Optional[WriteHook] = None) -> None:
        """Call ``on_read(offset, size)`` instead of reading the bytes, and ``on_write(offset,
        size, value)`` after a write is stored, for accesses inside [start, start+length)."""
        self._hooks.append(_Hook(start, start + length, on_read, on_write))

    def _hook_at(self, offset: int) -> Optional[_Hook]:
        for hook in self._hooks:
            if hook.start <= offset < hook.end:
                return hook
        return None

    # --- guest access -------------------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        """A guest read; accesses past the 256-byte space read as zero (no extended space)."""
        if offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            return 0
        hook = self._hook_at(offset)
        if hook is not None and hook.on_read is not None:
            return hook.on_read(offset, size)
        return self.get(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            return
        old_command = self.command
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            at = offset + i
            wmask, w1c = self.wmask[at], self.w1cmask[at]
            self.config[at] = ((self.config[at] & ~wmask) | (byte & wmask)) & ~(byte & w1c) & 0xFF
        end = offset + size
        if _overlaps(offset, end, COMMAND, COMMAND + 2) or _overlaps(offset, end, BAR0, BAR0 + 4 * BAR_COUNT):
            self.mappings_changed(self)
        if (old_command ^ self.command) & COMMAND_INTX_DISABLE:
            self._drive_intx()
        hook = self._hook_at(offset)
        if hook is not None and hook.on_write is not None:
            hook.on_write(offset, size, value)

    # --- INTx -----------------------------------------------------------------------------------
    def use_intx(self, line: IrqLine, gsi: int) -> None:
        """Give the function INTA# wired to ``line`` (GSI ``gsi``, reported in Interrupt Line)."""
        self.intx = line
        self.config[INTERRUPT_PIN] = PIN_INTA
        self.config[INTERRUPT_LINE] = gsi & 0xFF

    def set_intx(self, level: bool) -> None:
        """The device asserts or deasserts INTx; Interrupt Status follows, the pin only while
        the guest has not set Interrupt Disable."""
        with self._intx_lock:  # the vCPU thread and an I/O thread may both get here
            self.intx_level = bool(level)
            status = self.get(STATUS, 2)
            self.set_u16(STATUS, status | STATUS_INTERRUPT if level else status & ~STATUS_INTERRUPT)
            self._drive_intx()

    def _drive_intx(self) -> None:
        with self._intx_lock:
            if self.intx is not None:
                self.intx.set_level(self.intx_level and not self.command & COMMAND_INTX_DISABLE)

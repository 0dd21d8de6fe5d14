"""Guest physical memory: anonymous mmap'd RAM laid out around the below-4 GiB MMIO hole.

All guest memory accesses by loaders, devices and the software CPU go through
:class:`GuestMemory`. An address outside RAM raises :class:`GuestAddressError`; nothing
hands out a slice that reaches past a region.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from typing import Callable, Iterator, List, NamedTuple

from .errors import GuestAddressError, GuestMemoryError
from .runtime_env import ON_PYPY

# RAM below 4 GiB stops here; [MMIO_HOLE_START, 4 GiB) is left for the LAPIC, IOAPIC,
# PCI BARs and virtio-mmio windows, as on QEMU's pc machine.
MMIO_HOLE_START = 0xC000_0000
FOUR_GIB = 1 << 32

MiB = 1 << 20
GiB = 1 << 30


class MemoryRegion(NamedTuple):
    """One contiguous range of guest RAM backed by a slice of the host mmap."""

    guest_addr: int
    size: int
    host_offset: int  # offset of this region inside GuestMemory's mmap

    @property
    def end(self) -> int:
        return self.guest_addr + self.size


def ram_layout(ram_size: int) -> List[MemoryRegion]:
    """Split ``ram_size`` bytes into the regions below and above the MMIO hole."""
    if ram_size <= 0:
        raise GuestMemoryError(f"guest RAM size must be positive, got {ram_size}")
    low = min(ram_size, MMIO_HOLE_START)
    regions = [MemoryRegion(0, low, 0)]
    if ram_size > low:
        regions.append(MemoryRegion(FOUR_GIB, ram_size - low, low))
    return regions


# CPython's struct.pack_into clears its target bytes before it writes them: a process
# reading a 16-bit field that another kept rewriting with the same value through it saw 0
# in 2% of its reads. A vCPU runs beside the device threads under KVM, so a used index
# written that way could read 0 for an instant and the guest would take the whole ring as
# used. A store through a typed memoryview is one machine store there. PyPy's pack_into is
# one store already (no torn or cleared value in 180 million reads) and 50 times faster
# than the typed view, so it keeps it. (x86 is little-endian: typed views and "<" agree.)
_PACK_INTO_CLEARS_FIRST = not ON_PYPY


class GuestMemory:
    """Guest RAM of ``ram_size`` bytes, bounds-checked, addressed by guest physical address.

    ``shared`` maps it MAP_SHARED, so a process forked afterwards works on the same RAM (a
    benchmark's guest driver in its own process, as a vCPU runs outside the VMM's Python)."""

    def __init__(self, ram_size: int, shared: bool = False) -> None:
        self.ram_size = ram_size
        self.regions = ram_layout(ram_size)
        sharing = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        try:
            # MAP_NORESERVE: a large guest costs host memory only for the pages it touches.
            self._mmap = mmap.mmap(
                -1, ram_size, flags=sharing | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
            )
        except (OSError, OverflowError, ValueError) as err:
            raise GuestMemoryError(f"cannot allocate {ram_size // MiB} MiB of guest RAM: {err}") from err
        if hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
            # As QEMU does for guest RAM: where the host's transparent huge pages are in
            # "madvise" mode (Debian's default), RAM the guest touches comes in 2 MiB pages,
            # so the host walks fewer page tables for the software CPU's accesses, a device's
            # copies and KVM's nested paging. Where THP is off it is a no-op.
            try:
                self._mmap.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        self._view = memoryview(self._mmap)
        if _PACK_INTO_CLEARS_FIRST:
            self._as_u16, self._as_u32, self._as_u64 = (
                self._view[:ram_size - ram_size % size].cast(code) for code, size in (("H", 2), ("I", 4), ("Q", 8)))
        # RAM below the hole starts at guest address 0 and mmap offset 0: most accesses land
        # there, so _offset tests it before walking the region list.
        self._low_end = self.regions[0].end
        self._base_ptr = ctypes.addressof(ctypes.c_char.from_buffer(self._mmap))
        # Called with (gpa, length) for each buffer a device is handed for writing (DMA),
        # from the device's thread: the software CPU drops the code it translated there.
        self.device_write_watchers: List[Callable[[int, int], None]] = []

    # --- layout -------------------------------------------------------------------------
    def host_address(self, region: MemoryRegion) -> int:
        """Host virtual address of a region's first byte (for KVM_SET_USER_MEMORY_REGION)."""
        return self._base_ptr + region.host_offset

    def __iter__(self) -> Iterator[MemoryRegion]:
        return iter(self.regions)

    def _offset(self, gpa: int, size: int) -> int:
        """Offset into the mmap of [gpa, gpa+size), which must lie inside one region."""
        if gpa >= 0 and gpa + size <= self._low_end:
            return gpa
        for region in self.regions:
            if region.guest_addr <= gpa and gpa + size <= region.end:
                return region.host_offset + (gpa - region.guest_addr)
        raise GuestAddressError(gpa, size)

    def contains(self, gpa: int, size: int = 1) -> bool:
        if gpa < 0 or size < 0:
            return False
        return any(r.guest_addr <= gpa and gpa + size <= r.end for r in self.regions)

    def note_device_write(self, gpa: int, length: int) -> None:
        """A device is about to write [gpa, gpa + length) (see device_write_watchers)."""
        for watcher in self.device_write_watchers:
            watcher(gpa, length)

    # --- byte access ---------------------------------------------------------------------
    def view(self, gpa: int, size: int) -> memoryview:
        """A writable memoryview of [gpa, gpa+size); the range must lie inside one region."""
        if 0 <= gpa and 0 <= size and gpa + size <= self._low_end:
            # RAM below the hole, where nearly every buffer lies: the mmap offset is the
            # address. Tested here rather than through _offset, whose call costs as much as
            # the slice (each virtio request takes three or four views).
            return self._view[gpa:gpa + size]
        if gpa < 0 or size < 0:
            raise GuestAddressError(gpa, size)
        off = self._offset(gpa, size)
        return self._view[off:off + size]

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.view(gpa, size))

    def write(self, gpa: int, data: bytes) -> None:
        self.view(gpa, len(data))[:] = data

    def fill(self, gpa: int, size: int, byte: int = 0) -> None:
        self.view(gpa, size)[:] = bytes([byte]) * size

    # --- typed access ---------------------------------------------------------------------
    def read_u8(self, gpa: int) -> int:
        return self._view[self._offset(gpa, 1)]

    def read_u16(self, gpa: int) -> int:
        return struct.unpack_from("<H", self._mmap, self._offset(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return struct.unpack_from("<I", self._mmap, self._offset(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self._mmap, self._offset(gpa, 8))[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self._view[self._offset(gpa, 1)] = value & 0xFF

    if _PACK_INTO_CLEARS_FIRST:
        def write_u16(self, gpa: int, value: int) -> None:
            self._store(self._as_u16, gpa, 2, value & 0xFFFF)

        def write_u32(self, gpa: int, value: int) -> None:
            self._store(self._as_u32, gpa, 4, value & 0xFFFF_FFFF)

        def write_u64(self, gpa: int, value: int) -> None:
            self._store(self._as_u64, gpa, 8, value & 0xFFFF_FFFF_FFFF_FFFF)

        def _store(self, typed: memoryview, gpa: int, size: int, value: int) -> None:
            """One machine store where the field is aligned, as the rings' fields are."""
            offset = self._offset(gpa, size)
            if offset % size:
                self._view[offset:offset + size] = value.to_bytes(size, "little")
            else:
                typed[offset // size] = value
    else:
        def write_u16(self, gpa: int, value: int) -> None:
            struct.pack_into("<H", self._mmap, self._offset(gpa, 2), value & 0xFFFF)

        def write_u32(self, gpa: int, value: int) -> None:
            struct.pack_into("<I", self._mmap, self._offset(gpa, 4), value & 0xFFFF_FFFF)

        def write_u64(self, gpa: int, value: int) -> None:
            top = value >> 63
            if top == 0 or top == -1:
                # The same bytes, packed signed: masked with 2**64-1 the value would be a long
                # integer on PyPy (each virtqueue's used-ring entry goes through here).
                struct.pack_into("<q", self._mmap, self._offset(gpa, 8), value)
            else:
                struct.pack_into("<Q", self._mmap, self._offset(gpa, 8), value & 0xFFFF_FFFF_FFFF_FFFF)

    def read_obj(self, gpa: int, ctype: type) -> ctypes.Structure:
        """Copy a ctypes structure out of guest memory."""
        return ctype.from_buffer_copy(self.read(gpa, ctypes.sizeof(ctype)))

    def write_obj(self, gpa: int, obj: ctypes.Structure) -> None:
        self.write(gpa, bytes(obj))

    def close(self) -> None:
        if _PACK_INTO_CLEARS_FIRST:
            for typed in (self._as_u16, self._as_u32, self._as_u64):
                typed.release()
        self._view.release()
        try:
            self._mmap.close()
        except BufferError:
            # A ctypes pointer (KVM memory slot) still references the buffer; the mapping
            # goes away with the process.
            pass

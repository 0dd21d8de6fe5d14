"""GuestMemory: RAM laid around the MMIO hole, every access bounds-checked."""

import ctypes
import os
import time

import pytest

from pyhv.errors import GuestAddressError, GuestMemoryError
from pyhv.memory import FOUR_GIB, MMIO_HOLE_START, GiB, GuestMemory, MiB, ram_layout


def test_layout_below_the_hole():
    assert [(r.guest_addr, r.size) for r in ram_layout(256 * MiB)] == [(0, 256 * MiB)]


def test_layout_split_around_the_hole():
    regions = ram_layout(4 * GiB)
    assert [(r.guest_addr, r.size, r.host_offset) for r in regions] == [
        (0, MMIO_HOLE_START, 0), (FOUR_GIB, 4 * GiB - MMIO_HOLE_START, MMIO_HOLE_START)]


def test_typed_access_round_trips():
    memory = GuestMemory(2 * MiB)
    memory.write_u8(0x10, 0x1FF)
    memory.write_u16(0x20, 0xBEEF)
    memory.write_u32(0x30, 0xDEADBEEF)
    memory.write_u64(0x40, 0x0123_4567_89AB_CDEF)
    assert memory.read_u8(0x10) == 0xFF
    assert memory.read_u16(0x20) == 0xBEEF
    assert memory.read_u32(0x30) == 0xDEADBEEF
    assert memory.read_u64(0x40) == 0x0123_4567_89AB_CDEF
    assert memory.read(0x40, 2) == b"\xef\xcd"


def test_view_is_live():
    memory = GuestMemory(2 * MiB)
    view = memory.view(0x1000, 4)
    view[:] = b"abcd"
    assert memory.read(0x1000, 4) == b"abcd"
    memory.fill(0x1000, 4, 0x5A)
    assert bytes(view) == b"ZZZZ"


def test_high_region_is_backed_by_the_right_bytes():
    memory = GuestMemory(3 * GiB + 2 * MiB)  # MAP_NORESERVE: only touched pages cost memory
    memory.write_u32(FOUR_GIB + 0x100, 0x11223344)
    assert memory.read_u32(FOUR_GIB + 0x100) == 0x11223344
    assert memory.read_u32(0x100) == 0  # the low region is separate
    assert bytes(memory.view(FOUR_GIB + 0x100, 4)) == bytes([0x44, 0x33, 0x22, 0x11])
    assert memory.contains(FOUR_GIB, 2 * MiB) and not memory.contains(FOUR_GIB, 2 * MiB + 1)


def test_a_view_may_end_where_ram_ends():
    memory = GuestMemory(2 * MiB)
    memory.write(2 * MiB - 4, b"last")
    assert bytes(memory.view(2 * MiB - 4, 4)) == b"last"
    assert len(memory.view(2 * MiB, 0)) == 0


@pytest.mark.parametrize("gpa,size", [
    (2 * MiB - 2, 4),           # crosses the end of RAM
    (2 * MiB, 1),               # just past it
    (-1, 1),                    # negative address
    (0x1000, -1),               # negative size
    (MMIO_HOLE_START, 4),       # the hole
    (1 << 64, 1),
])
def test_outside_ram_is_an_error(gpa, size):
    memory = GuestMemory(2 * MiB)
    with pytest.raises(GuestAddressError):
        memory.view(gpa, size)
    assert not memory.contains(gpa, size)


def test_access_spanning_the_hole_is_refused():
    memory = GuestMemory(3 * GiB + 2 * MiB)
    with pytest.raises(GuestAddressError, match="outside guest RAM"):
        memory.read(MMIO_HOLE_START - 2, 4)


def test_read_obj_and_write_obj():
    class Pair(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint16)]

    memory = GuestMemory(2 * MiB)
    memory.write_obj(0x500, Pair(7, 9))
    got = memory.read_obj(0x500, Pair)
    assert (got.a, got.b) == (7, 9)


def test_host_address_points_at_the_bytes():
    memory = GuestMemory(2 * MiB)
    memory.write(0x2000, b"pyhv")
    base = memory.host_address(memory.regions[0])
    assert ctypes.string_at(base + 0x2000, 4) == b"pyhv"


def test_impossible_sizes_are_clear_errors():
    with pytest.raises(GuestMemoryError, match="must be positive"):
        GuestMemory(0)


@pytest.mark.parametrize("shared", [False, True])
def test_shared_ram_is_seen_by_a_forked_process(shared):
    memory = GuestMemory(2 * MiB, shared=shared)
    try:
        pid = os.fork()
        if pid == 0:
            memory.write_u32(0x1000, 0xC0FFEE)
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert memory.read_u32(0x1000) == (0xC0FFEE if shared else 0)
    finally:
        memory.close()


@pytest.mark.parametrize("size", [2, 4, 8])
def test_typed_writes_are_single_stores(size):
    """A vCPU reads ring indexes while a device thread writes them (under KVM they run at
    once): a field rewritten with the same value must never read as anything else. CPython's
    struct.pack_into cleared the bytes first, and a reader saw 0 in about 2% of its reads."""
    memory = GuestMemory(2 * MiB, shared=True)
    write = {2: memory.write_u16, 4: memory.write_u32, 8: memory.write_u64}[size]
    read = {2: memory.read_u16, 4: memory.read_u32, 8: memory.read_u64}[size]
    value = int.from_bytes(b"\x5a" * size, "little")
    gpa = 0x2000 + 8  # aligned, as the rings' fields are
    write(gpa, value)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the reader: the exit status says whether it ever saw another value
        code = 2
        try:
            os.write(ready_w, b"r")
            end = time.monotonic() + 0.3
            code = 0
            while time.monotonic() < end:
                for _ in range(1000):
                    if read(gpa) != value:
                        code = 1
        finally:
            os._exit(code)
    try:
        os.read(ready_r, 1)
        end = time.monotonic() + 0.35
        while time.monotonic() < end:
            for _ in range(1000):
                write(gpa, value)
        assert os.waitpid(pid, 0)[1] >> 8 == 0, "the reader saw a value that was never written"
    finally:
        os.close(ready_r)
        os.close(ready_w)
        memory.close()


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as stream:
            text = stream.read()
    except OSError:
        return ""
    return text[text.index("[") + 1:text.index("]")] if "[" in text else ""


def _smaps_field(address: int, field: str) -> str:
    """``field`` of the mapping of /proc/self/smaps that holds ``address``."""
    inside = False
    with open("/proc/self/smaps") as stream:
        for line in stream:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start <= address < end
            elif inside and head == field + ":":
                return line.split()[1]
    raise AssertionError(f"no {field} for {address:#x} in /proc/self/smaps")


@pytest.mark.skipif(_thp_mode() != "madvise", reason="the host's transparent huge pages are not in madvise mode")
def test_private_ram_asks_for_huge_pages():
    # In madvise mode a mapping gets 2 MiB pages only if it asked for them (as QEMU asks for
    # guest RAM): THPeligible says whether it did.
    memory = GuestMemory(8 * MiB)
    assert _smaps_field(memory.host_address(memory.regions[0]), "THPeligible") == "1"

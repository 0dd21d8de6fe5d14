"""bzImage loading: zero page fields (read back at boot.rst offsets), initrd placement,
command line, kernel placement and entry, and every refusal."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from boot_images import build_bzimage, build_elf
from pyhv.boot import load_kernel
from pyhv.errors import BootError
from pyhv.memory import GuestMemory

MiB = 1 << 20
ZERO_PAGE = 0x7000
KERNEL_PADDR = 0x1000000
LINUX_VIRT_OFFSET = 0xFFFFFFFF80000000 - 0x0  # __START_KERNEL_map: vaddr = paddr + this
TEXT = b"startup_64 code " * 256
DATA = b"kernel data" * 100
BSS_SIZE = 0x3000
INIT_SIZE = 0x400000


def vmlinux() -> bytes:
    return build_elf([(KERNEL_PADDR, TEXT, len(TEXT)), (KERNEL_PADDR + 0x200000, DATA, len(DATA) + BSS_SIZE)],
                     entry=KERNEL_PADDR, vaddr_offset=LINUX_VIRT_OFFSET)


def gzip_payload(elf: bytes) -> bytes:
    return gzip.compress(elf)  # gzip's ISIZE trailer is the kernel's size trailer


def write_kernel(tmp_path: Path, **kwargs: object) -> Path:
    kwargs.setdefault("payload", gzip_payload(vmlinux()))
    kwargs.setdefault("init_size", INIT_SIZE)
    path = tmp_path / "bzImage"
    path.write_bytes(build_bzimage(**kwargs))  # type: ignore[arg-type]
    return path


def zp_u8(mem: GuestMemory, off: int) -> int:
    return mem.read_u8(ZERO_PAGE + off)


def zp_u16(mem: GuestMemory, off: int) -> int:
    return mem.read_u16(ZERO_PAGE + off)


def zp_u32(mem: GuestMemory, off: int) -> int:
    return mem.read_u32(ZERO_PAGE + off)


def c_string(mem: GuestMemory, addr: int, limit: int = 4096) -> bytes:
    raw = mem.read(addr, limit)
    return raw[:raw.index(b"\0")]


def test_zero_page_fields(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = write_kernel(tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"070701" + bytes(range(256)) * 40)
    load_kernel(memory, kernel, initrd, "console=ttyS0 root=/dev/vda", decompress=False)
    file_bytes = kernel.read_bytes()
    # The setup header is copied from the file (0x1f1 to 0x202 + byte at 0x201).
    assert zp_u8(memory, 0x1F1) == file_bytes[0x1F1]
    assert memory.read(ZERO_PAGE + 0x202, 4) == b"HdrS"
    assert zp_u16(memory, 0x206) == 0x020F
    assert zp_u16(memory, 0x1FE) == 0xAA55
    assert zp_u32(memory, 0x260) == INIT_SIZE
    # Fields the boot loader fills.
    assert zp_u8(memory, 0x210) == 0xFF  # type_of_loader: undefined
    assert zp_u8(memory, 0x211) & 0x80  # CAN_USE_HEAP
    assert zp_u8(memory, 0x211) & 0x01  # LOADED_HIGH kept
    assert zp_u16(memory, 0x224) == 0xFE00  # heap_end_ptr
    cmd_line_ptr = zp_u32(memory, 0x228)
    assert cmd_line_ptr + 0x800 <= 0xA0000
    assert c_string(memory, cmd_line_ptr) == b"console=ttyS0 root=/dev/vda"
    assert zp_u32(memory, 0x0C8) == 0  # ext_cmd_line_ptr
    ramdisk_image, ramdisk_size = zp_u32(memory, 0x218), zp_u32(memory, 0x21C)
    assert ramdisk_size == initrd.stat().st_size
    assert memory.read(ramdisk_image, ramdisk_size) == initrd.read_bytes()
    assert zp_u32(memory, 0x0C0) == 0 and zp_u32(memory, 0x0C4) == 0  # ext_ramdisk_*
    # e820: count at 0x1e8, 20-byte entries from 0x2d0.
    count = zp_u8(memory, 0x1E8)
    entries = [struct.unpack("<QQI", memory.read(ZERO_PAGE + 0x2D0 + 20 * i, 20)) for i in range(count)]
    assert entries == [
        (0, 0x9FC00, 1),
        (0x9FC00, 0x400, 2),
        (0xF0000, 0x10000, 2),
        (0x100000, 256 * MiB - 0x100000, 1),
    ]


def test_in_guest_decompression_loads_protected_mode_kernel_at_1mib(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = write_kernel(tmp_path)
    state = load_kernel(memory, kernel, decompress=False)
    setup_size = (4 + 1) * 512
    protected = kernel.read_bytes()[setup_size:]
    assert memory.read(0x100000, len(protected)) == protected
    assert state.rip == 0x100000 + 0x200
    assert state.gprs["rsi"] == ZERO_PAGE
    assert state.long_mode


def test_host_decompression_loads_vmlinux_segments(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = write_kernel(tmp_path)
    memory.fill(KERNEL_PADDR + 0x200000, 0x10000, 0xCC)  # bss must come out zeroed
    state = load_kernel(memory, kernel, cmdline="quiet")  # decompress defaults to on
    assert state.rip == KERNEL_PADDR
    assert memory.read(KERNEL_PADDR, len(TEXT)) == TEXT
    assert memory.read(KERNEL_PADDR + 0x200000, len(DATA)) == DATA
    assert memory.read(KERNEL_PADDR + 0x200000 + len(DATA), BSS_SIZE) == bytes(BSS_SIZE)
    assert memory.read(0x100000, 16) == bytes(16)  # the decompressor stub was not loaded
    assert memory.read(ZERO_PAGE + 0x202, 4) == b"HdrS"
    assert c_string(memory, zp_u32(memory, 0x228)) == b"quiet"
    assert state.gprs["rsi"] == ZERO_PAGE and state.long_mode


def test_initrd_goes_high_below_initrd_addr_max(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = write_kernel(tmp_path, initrd_addr_max=0x3FFFFFF)  # 64 MiB - 1
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"x" * 12345)
    load_kernel(memory, kernel, initrd)
    image = zp_u32(memory, 0x218)
    assert image % 4096 == 0
    assert image + 12345 - 1 <= 0x3FFFFFF
    assert image + 12345 > 0x3FFFFFF - 4096  # as high as the limit allows
    assert image >= KERNEL_PADDR + INIT_SIZE


def test_initrd_goes_high_below_end_of_ram(tmp_path: Path) -> None:
    memory = GuestMemory(32 * MiB)
    kernel = write_kernel(tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"y" * (MiB + 1))
    load_kernel(memory, kernel, initrd)
    image = zp_u32(memory, 0x218)
    assert image == (32 * MiB - (MiB + 1)) & ~0xFFF
    assert memory.read(image, MiB + 1) == initrd.read_bytes()


def test_initrd_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    memory = GuestMemory(24 * MiB)  # the kernel needs up to 20 MiB
    kernel = write_kernel(tmp_path)
    initrd = tmp_path / "big-initrd"
    initrd.write_bytes(bytes(5 * MiB))
    with pytest.raises(BootError, match=r"initrd .*big-initrd.* do not fit .*-m"):
        load_kernel(memory, kernel, initrd)


@pytest.mark.parametrize("initrd_name, problem", [("missing", "cannot read"), ("empty", "empty")])
def test_unreadable_or_empty_initrd(tmp_path: Path, memory: GuestMemory, initrd_name: str, problem: str) -> None:
    kernel = write_kernel(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(BootError, match=f"initrd .*{initrd_name}.*{problem}"):
        load_kernel(memory, kernel, tmp_path / initrd_name)


def test_command_line_limit_is_the_kernels_cmdline_size(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = write_kernel(tmp_path, cmdline_size=16)
    load_kernel(memory, kernel, cmdline="a" * 16)
    assert c_string(memory, zp_u32(memory, 0x228)) == b"a" * 16
    with pytest.raises(BootError, match="17 bytes, the kernel accepts at most 16"):
        load_kernel(memory, kernel, cmdline="a" * 17)
    with pytest.raises(BootError, match="NUL"):
        load_kernel(memory, kernel, cmdline="a\0b")


def test_old_boot_protocol_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = write_kernel(tmp_path, version=0x0205)
    with pytest.raises(BootError, match=r"bzImage.*protocol 2\.05 is older than 2\.06"):
        load_kernel(memory, kernel)


def test_truncated_bzimage_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    full = build_bzimage(gzip_payload(vmlinux()))
    kernel = tmp_path / "cut"
    kernel.write_bytes(full[:len(full) - 100])
    with pytest.raises(BootError, match=r"cut: bzImage truncated: the header .* describes \d+ bytes, the file has"):
        load_kernel(memory, kernel)
    kernel.write_bytes(full[:0x230])
    with pytest.raises(BootError, match="cut: bzImage truncated: 560 bytes"):
        load_kernel(memory, kernel)


def test_payload_outside_the_file_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    image = bytearray(build_bzimage(gzip_payload(vmlinux())))
    struct.pack_into("<I", image, 0x24C, len(image))  # payload_length past the end
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bytes(image))
    with pytest.raises(BootError, match="payload at offset .* passes the end of the file"):
        load_kernel(memory, kernel)


def test_bad_boot_flag_and_zimage_are_refused(tmp_path: Path, memory: GuestMemory) -> None:
    with pytest.raises(BootError, match="boot_flag at offset 0x1fe is 0x0000"):
        load_kernel(memory, write_kernel(tmp_path, boot_flag=0))
    with pytest.raises(BootError, match="zImage"):
        load_kernel(memory, write_kernel(tmp_path, loadflags=0))


def test_guest_ram_too_small_for_init_size(tmp_path: Path) -> None:
    memory = GuestMemory(19 * MiB)  # holds the vmlinux segments, not init_size past 16 MiB
    kernel = write_kernel(tmp_path)
    for decompress in (False, True):
        with pytest.raises(BootError, match=r"needs RAM up to 0x1400000 \(20 MiB.*has 19 MiB.*raise -m"):
            load_kernel(memory, kernel, decompress=decompress)


def test_corrupt_payload_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    payload = bytearray(gzip_payload(vmlinux()))
    payload[20:40] = b"\xff" * 20
    kernel = write_kernel(tmp_path, payload=bytes(payload))
    with pytest.raises(BootError, match="bzImage: cannot decompress the kernel payload: corrupt gzip"):
        load_kernel(memory, kernel)


def test_size_trailer_mismatch_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    import bz2
    elf = vmlinux()
    kernel = write_kernel(tmp_path, payload=bz2.compress(elf), size_trailer=len(elf) + 1)
    with pytest.raises(BootError, match=f"decompressed to {len(elf)} bytes, but its size trailer says {len(elf) + 1}"):
        load_kernel(memory, kernel)
    kernel = write_kernel(tmp_path, payload=bz2.compress(elf), size_trailer=len(elf))
    assert load_kernel(memory, kernel).rip == KERNEL_PADDR


def test_payload_that_is_not_an_elf_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = write_kernel(tmp_path, payload=gzip.compress(b"MZ not an elf" * 10))
    with pytest.raises(BootError, match="decompressed payload is not an ELF vmlinux"):
        load_kernel(memory, kernel)


def test_vmlinux_segment_outside_ram_is_refused(tmp_path: Path, memory: GuestMemory) -> None:
    elf = build_elf([(KERNEL_PADDR, TEXT, len(TEXT)), (300 * MiB, DATA, len(DATA))], entry=KERNEL_PADDR)
    kernel = write_kernel(tmp_path, payload=gzip.compress(elf))
    with pytest.raises(BootError, match=r"segment 1 \[0x12c00000, .*\) lies outside guest RAM \(256 MiB\)"):
        load_kernel(memory, kernel)


def test_32bit_boot_protocol_entry(tmp_path: Path, memory: GuestMemory) -> None:
    # code32_start is the loader's to set; the code is where we put it, at 1 MiB.
    kernel = write_kernel(tmp_path, xloadflags=0, code32_start=0x200000)
    state = load_kernel(memory, kernel, decompress=False)
    assert not state.long_mode
    assert state.rip == 0x100000
    assert state.gprs == {"rsi": ZERO_PAGE, "rbp": 0, "rdi": 0, "rbx": 0}
    assert state.cs.selector == 0x10 and state.cs.db == 1


def test_kernel_without_payload_fields_decompresses_itself_by_default(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = write_kernel(tmp_path, version=0x0207)  # payload_offset/length arrived in 2.08
    state = load_kernel(memory, kernel)
    assert memory.read(0x100000, 0x300) == b"\xf4" * 0x300  # the protected-mode kernel itself
    assert state.rip == 0x100000 and not state.long_mode  # 2.07 predates the 64-bit entry
    with pytest.raises(BootError, match="no payload_offset/payload_length"):
        load_kernel(memory, kernel, decompress=True)


def test_reserved_ranges_and_rsdp_reach_the_zero_page(tmp_path: Path, memory: GuestMemory) -> None:
    kernel = write_kernel(tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"z" * 10000)
    acpi = (250 * MiB, 256 * MiB)  # firmware tables at the top of RAM, as SeaBIOS puts them
    load_kernel(memory, kernel, initrd, reserved=[acpi], acpi_rsdp_addr=0xF5A30)
    assert memory.read_u64(ZERO_PAGE + 0x070) == 0xF5A30
    count = zp_u8(memory, 0x1E8)
    entries = [struct.unpack("<QQI", memory.read(ZERO_PAGE + 0x2D0 + 20 * i, 20)) for i in range(count)]
    assert (0x100000, 249 * MiB, 1) in entries
    assert (250 * MiB, 6 * MiB, 2) in entries
    image = zp_u32(memory, 0x218)
    assert image + 10000 <= 250 * MiB and image > 249 * MiB  # highest spot that spares the tables


def test_no_rsdp_leaves_the_field_zero(tmp_path: Path, memory: GuestMemory) -> None:
    memory.write_u64(ZERO_PAGE + 0x070, 0x1234)
    load_kernel(memory, write_kernel(tmp_path))
    assert memory.read_u64(ZERO_PAGE + 0x070) == 0


def setup_data_entries(mem: GuestMemory) -> list:
    """(type, data) of each entry of the setup_data list the zero page heads (boot.rst)."""
    entries = []
    addr = mem.read_u64(ZERO_PAGE + 0x250)
    while addr:
        next_addr, kind, length = struct.unpack("<QII", mem.read(addr, 16))
        entries.append((kind, mem.read(addr + 16, length)))
        addr = next_addr
    return entries


def test_rng_seed_reaches_the_kernel_as_setup_data(tmp_path: Path, memory: GuestMemory) -> None:
    seed = bytes(range(32))
    load_kernel(memory, write_kernel(tmp_path), rng_seed=seed)
    assert setup_data_entries(memory) == [(9, seed)]  # SETUP_RNG_SEED
    setup_data = memory.read_u64(ZERO_PAGE + 0x250)
    assert setup_data < 0x7000 and setup_data + 16 + 32 <= 0x7000  # low RAM, clear of the zero page


def test_no_rng_seed_for_kernels_before_setup_data(tmp_path: Path, memory: GuestMemory) -> None:
    memory.write_u64(ZERO_PAGE + 0x250, 0x1234)  # a previous boot's value must not survive
    load_kernel(memory, write_kernel(tmp_path, version=0x0208), rng_seed=bytes(32))
    assert memory.read_u64(ZERO_PAGE + 0x250) == 0  # protocol 2.09 brought setup_data
    load_kernel(memory, write_kernel(tmp_path), rng_seed=None)
    assert memory.read_u64(ZERO_PAGE + 0x250) == 0

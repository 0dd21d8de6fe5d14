"""Building the Linux zero page (boot_params): command line, initrd placement, e820 map.

Shared by the bzImage loader (in-guest or host-side decompression) and the ELF vmlinux
loader; both hand the kernel the same boot_params at :data:`ZERO_PAGE_ADDR`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from ..errors import BootError
from ..memory import GuestMemory
from .bootparams import (BOOT_FLAG, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE, SETUP_DATA_PROTOCOL,
                         SETUP_HEADER_MAGIC, SETUP_HEADER_OFFSET, SETUP_RNG_SEED, TYPE_OF_LOADER_UNDEFINED,
                         BootParams, SetupHeader)
from .e820 import E820_RAM, E820Entry, low_ram_end
from .layout import CMDLINE_ADDR, CMDLINE_LIMIT, PAGE_SIZE, SETUP_DATA_ADDR, ZERO_PAGE_ADDR, align_down

# Protocol 2.02 (first with cmd_line_ptr) lets the real-mode heap end 0x200 bytes below
# the 0x10000-byte setup segment, the value boot loaders conventionally pass.
HEAP_END_PTR = 0xFE00
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF  # protocol < 2.03
# The setup header we present when the kernel (an ELF vmlinux) has none of its own.
SYNTHETIC_PROTOCOL = 0x020F
# The seed's size: what the kernel's input pool credits as 256 bits, enough for its crng to
# count as initialised (Linux 6.x, POOL_READY_BITS).
RNG_SEED_BYTES = 32
_SETUP_DATA_HEADER = struct.Struct("<QII")  # next, type, len


class InitrdPlacement(NamedTuple):
    addr: int
    size: int


def encode_cmdline(cmdline: str, source: str) -> bytes:
    data = cmdline.encode("utf-8")
    if b"\0" in data:
        raise BootError(f"{source}: the kernel command line contains a NUL byte")
    return data


def write_cmdline(memory: GuestMemory, cmdline: str, max_size: int, source: str) -> int:
    """Write the NUL-terminated command line at CMDLINE_ADDR; return its address.

    ``max_size`` is the kernel's cmdline_size: the longest line it accepts, NUL excluded.
    """
    data = encode_cmdline(cmdline, source)
    if len(data) > max_size:
        raise BootError(
            f"{source}: kernel command line is {len(data)} bytes, the kernel accepts at most {max_size}"
        )
    if CMDLINE_ADDR + len(data) + 1 > CMDLINE_LIMIT:
        raise BootError(f"{source}: kernel command line of {len(data)} bytes does not fit below 640 KiB")
    memory.write(CMDLINE_ADDR, data + b"\0")
    return CMDLINE_ADDR


def load_initrd(memory: GuestMemory, initrd: Path, kernel_end: int, addr_max: int,
                e820: Sequence[E820Entry]) -> InitrdPlacement:
    """Read ``initrd`` into guest memory, page-aligned and as high as the kernel allows.

    The image must lie in one usable RAM range of ``e820`` (so it spares reserved ranges
    such as ACPI tables), end at or below ``addr_max`` (the kernel's initrd_addr_max,
    inclusive) and below the end of low RAM, and start at or above ``kernel_end`` so the
    kernel does not overwrite it while it unpacks itself.
    """
    try:
        size = initrd.stat().st_size
    except OSError as err:
        raise BootError(f"initrd {initrd}: cannot read: {err.strerror or err}") from err
    if size == 0:
        raise BootError(f"initrd {initrd}: file is empty")
    ceiling = min(addr_max + 1, low_ram_end(memory))
    addr = -1
    for entry in e820:
        if entry.type != E820_RAM:
            continue
        candidate = align_down(min(entry.end, ceiling) - size, PAGE_SIZE)
        if candidate >= max(entry.addr, kernel_end):
            addr = max(addr, candidate)
    if addr < 0:
        raise BootError(
            f"initrd {initrd}: {size} bytes do not fit between the kernel's end at {kernel_end:#x} and "
            f"{ceiling:#x} (the initrd limit or end of low RAM); give the guest more memory (-m)"
        )
    try:
        with initrd.open("rb") as handle:
            got = handle.readinto(memory.view(addr, size))
    except OSError as err:
        raise BootError(f"initrd {initrd}: cannot read: {err.strerror or err}") from err
    if got != size:
        raise BootError(f"initrd {initrd}: short read ({got} of {size} bytes); did the file change?")
    return InitrdPlacement(addr, size)


def synthetic_setup_header(cmdline_size: int = 0x7FF) -> bytes:
    """A setup header for a kernel that brings none (an ELF vmlinux entered at startup_64)."""
    header = SetupHeader()
    header.boot_flag = BOOT_FLAG
    header.header = SETUP_HEADER_MAGIC
    header.version = SYNTHETIC_PROTOCOL
    header.cmdline_size = cmdline_size
    header.initrd_addr_max = 0x7FFFFFFF
    header.kernel_alignment = 0x200000
    return bytes(header)


def boot_rng_seed(seed: Optional[int] = None) -> bytes:
    """The RNG seed a Linux guest gets at boot: fresh host randomness, or with ``seed``
    (``pyhv run -seed N``, QEMU's option for reproducible guests) the same bytes every time."""
    if seed is None:
        return os.urandom(RNG_SEED_BYTES)
    return hashlib.sha256(b"pyhv boot rng seed %d" % seed).digest()[:RNG_SEED_BYTES]


def _write_rng_seed(memory: GuestMemory, params: BootParams, rng_seed: bytes) -> None:
    """Hand the kernel ``rng_seed`` as a SETUP_RNG_SEED entry of the setup_data list.

    Linux 6.0 and later mixes it into its entropy pool while parsing boot_params, credits it
    when it trusts the boot loader (RANDOM_TRUST_BOOTLOADER, on in Debian's kernel) and wipes
    it. Without a seed and without RDRAND, the kernel starts with no credited entropy, and
    until interrupts supply some, every get_random_u32() (one per new slab, one per tmpfs
    inode: many while the initramfs unpacks) hashes its whole input pool again."""
    if params.hdr.version < SETUP_DATA_PROTOCOL:
        return  # older kernels have no setup_data field to find it by
    memory.write(SETUP_DATA_ADDR, _SETUP_DATA_HEADER.pack(0, SETUP_RNG_SEED, len(rng_seed)) + rng_seed)
    params.hdr.setup_data = SETUP_DATA_ADDR


def build_zero_page(memory: GuestMemory, header_bytes: bytes, cmdline_addr: int,
                    initrd: Optional[InitrdPlacement], e820: Sequence[E820Entry],
                    source: str, acpi_rsdp_addr: Optional[int] = None,
                    rng_seed: Optional[bytes] = None) -> BootParams:
    """Fill boot_params from the kernel's setup header and write it at ZERO_PAGE_ADDR, with
    ``rng_seed`` (see :func:`boot_rng_seed`) in a setup_data entry when the kernel can take one."""
    params = BootParams()
    if acpi_rsdp_addr is not None:
        params.acpi_rsdp_addr = acpi_rsdp_addr
    raw = header_bytes[:ctypes.sizeof(BootParams) - SETUP_HEADER_OFFSET]
    ctypes.memmove(ctypes.addressof(params) + SETUP_HEADER_OFFSET, raw, len(raw))
    hdr = params.hdr
    hdr.type_of_loader = TYPE_OF_LOADER_UNDEFINED
    hdr.loadflags |= CAN_USE_HEAP
    hdr.heap_end_ptr = HEAP_END_PTR
    hdr.cmd_line_ptr = cmdline_addr & 0xFFFF_FFFF
    params.ext_cmd_line_ptr = cmdline_addr >> 32
    if initrd is not None:
        hdr.ramdisk_image = initrd.addr & 0xFFFF_FFFF
        hdr.ramdisk_size = initrd.size & 0xFFFF_FFFF
        params.ext_ramdisk_image = initrd.addr >> 32
        params.ext_ramdisk_size = initrd.size >> 32
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise BootError(f"{source}: memory map has {len(e820)} entries, boot_params holds {E820_MAX_ENTRIES_ZEROPAGE}")
    for index, entry in enumerate(e820):
        record = params.e820_table[index]
        record.addr, record.size, record.type = entry.addr, entry.size, entry.type
    params.e820_entries = len(e820)
    if rng_seed is not None:
        _write_rng_seed(memory, params, rng_seed)
    memory.write_obj(ZERO_PAGE_ADDR, params)
    return params

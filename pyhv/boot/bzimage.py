"""Linux bzImage: setup-header parsing and loading per the x86 boot protocol.

Two ways in, both entering in 64-bit long mode with RSI = boot_params:

* in-guest decompression: the protected-mode kernel loads at 1 MiB and runs from its
  64-bit entry (load address + 0x200), decompressing itself;
* host-side decompression: the payload (the compressed vmlinux) is decompressed here, its
  PT_LOAD segments are loaded at their physical addresses, and the guest starts at
  startup_64, skipping its decompressor. The zero page still carries the bzImage's setup
  header.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..cpu_state import CpuBootState
from ..errors import BootError
from ..memory import GuestMemory
from . import decompress as payload_codec
from .bootparams import (BOOT_FLAG, LOADED_HIGH, SETUP_HEADER_MAGIC, SETUP_HEADER_OFFSET,
                         XLF_KERNEL_64, SetupHeader)
from .cpu_entry import long_mode_entry, protected_mode_entry
from .e820 import E820Entry, low_ram_end, memory_map
from .elf import ELFCLASS64, EM_X86_64, check_segments_fit, is_elf, load_segments, parse_elf
from .layout import KERNEL_LOAD_ADDR, ZERO_PAGE_ADDR, align_up
from .zeropage import DEFAULT_INITRD_ADDR_MAX, build_zero_page, load_initrd, write_cmdline

MIN_PROTOCOL = 0x0206
SECTOR_SIZE = 512
DEFAULT_SETUP_SECTS = 4  # setup_sects == 0 means 4, for ancient kernels
STARTUP_64_OFFSET = 0x200  # 64-bit entry relative to the protected-mode load address
MIN_HEADER_END = SETUP_HEADER_OFFSET + ctypes.sizeof(SetupHeader)


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x206 and data[0x202:0x206] == b"HdrS"


@dataclass
class BzImage:
    """A parsed, validated bzImage held in host memory."""

    source: str
    data: bytes
    header: SetupHeader
    header_bytes: bytes  # the setup header exactly as the file has it (0x1f1 up to its end)
    setup_size: int  # real-mode part, boot sector included

    @property
    def protocol(self) -> int:
        return self.header.version

    @property
    def protected_mode_kernel(self) -> memoryview:
        return memoryview(self.data)[self.setup_size:]

    @property
    def initrd_addr_max(self) -> int:
        return self.header.initrd_addr_max if self.protocol >= 0x0203 else DEFAULT_INITRD_ADDR_MAX

    @property
    def has_payload(self) -> bool:
        """Whether the header locates the compressed vmlinux (protocol 2.08 and later)."""
        return self.protocol >= 0x0208 and self.header.payload_length >= 4

    def payload(self) -> bytes:
        start = self.setup_size + self.header.payload_offset
        return self.data[start:start + self.header.payload_length]

    def decompression_address(self) -> int:
        """Where the kernel's decompressor puts vmlinux when loaded at 1 MiB (head_64.S)."""
        hdr = self.header
        if hdr.relocatable_kernel:
            return max(align_up(KERNEL_LOAD_ADDR, max(hdr.kernel_alignment, 1)), hdr.pref_address)
        return hdr.pref_address

    def footprint_end(self) -> int:
        """First byte past the memory the kernel needs while it boots (init_size)."""
        image_end = KERNEL_LOAD_ADDR + len(self.protected_mode_kernel)
        return max(image_end, self.decompression_address() + self.header.init_size)


def parse_bzimage(data: bytes, source: str) -> BzImage:
    """Parse and validate the setup header; errors name the file, offset and problem."""
    if len(data) < MIN_HEADER_END:
        raise BootError(f"{source}: bzImage truncated: {len(data)} bytes, the setup header ends at {MIN_HEADER_END:#x}")
    header = SetupHeader.from_buffer_copy(data, SETUP_HEADER_OFFSET)
    if header.header != SETUP_HEADER_MAGIC:
        raise BootError(f"{source}: no 'HdrS' magic at offset 0x202: not a bzImage")
    if header.version < MIN_PROTOCOL:
        raise BootError(
            f"{source}: boot protocol {header.version >> 8}.{header.version & 0xFF:02d} is older than 2.06, "
            f"the oldest pyhv loads"
        )
    if header.boot_flag != BOOT_FLAG:
        raise BootError(f"{source}: boot_flag at offset 0x1fe is {header.boot_flag:#06x}, expected 0xaa55")
    if not header.loadflags & LOADED_HIGH:
        raise BootError(f"{source}: zImage (loaded below 1 MiB) is not supported; build a bzImage")
    setup_sects = header.setup_sects or DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * SECTOR_SIZE
    kernel_size = header.syssize * 16
    if setup_size + kernel_size > len(data):
        raise BootError(
            f"{source}: bzImage truncated: the header (setup_sects={setup_sects}, syssize={header.syssize:#x}) "
            f"describes {setup_size + kernel_size} bytes, the file has {len(data)}"
        )
    payload_end = setup_size + header.payload_offset + header.payload_length
    if header.payload_length and payload_end > len(data):
        raise BootError(
            f"{source}: bzImage payload at offset {setup_size + header.payload_offset:#x} "
            f"(+{header.payload_length:#x}) passes the end of the file ({len(data)} bytes)"
        )
    header_end = min(0x202 + data[0x201], len(data))
    return BzImage(source, data, header, bytes(data[SETUP_HEADER_OFFSET:header_end]), setup_size)


def decompress_payload(image: BzImage, max_output: int) -> bytes:
    """The vmlinux ELF inside the bzImage, decompressed on the host."""
    if not image.has_payload:
        raise BootError(f"{image.source}: bzImage has no payload_offset/payload_length (protocol < 2.08)")
    payload = image.payload()
    try:
        fmt, vmlinux = payload_codec.decompress(payload, max_output)
    except BootError as err:
        raise BootError(f"{image.source}: cannot decompress the kernel payload: {err}") from err
    # The kernel build ends every payload with the uncompressed size (gzip's own ISIZE
    # field, appended for the other formats); LZ4's legacy frame has no checksum, so this
    # is what catches a damaged LZ4 kernel.
    (expected,) = struct.unpack_from("<I", payload, len(payload) - 4)
    if expected != len(vmlinux) & 0xFFFF_FFFF:
        raise BootError(
            f"{image.source}: {fmt} payload decompressed to {len(vmlinux)} bytes, but its size trailer "
            f"says {expected}: the kernel image is damaged"
        )
    return vmlinux


def _check_fits(memory: GuestMemory, image: BzImage, end: int) -> None:
    ram_end = low_ram_end(memory)
    if end > ram_end:
        raise BootError(
            f"{image.source}: the kernel needs RAM up to {end:#x} ({-(-end // (1 << 20))} MiB: "
            f"init_size {image.header.init_size:#x} at {image.decompression_address():#x}) but the guest "
            f"has {ram_end >> 20} MiB below 4 GiB; raise -m"
        )


def load_bzimage(memory: GuestMemory, image: BzImage, initrd: Optional[Path], cmdline: str,
                 decompress: bool, e820: Optional[Sequence[E820Entry]] = None,
                 acpi_rsdp_addr: Optional[int] = None, rng_seed: Optional[bytes] = None) -> CpuBootState:
    """Load ``image`` (and ``initrd``) into guest memory and return the entry state.

    ``e820`` defaults to the map of ``memory``'s RAM; pass one with reserved ranges when
    the machine keeps firmware tables in RAM. ``rng_seed`` goes to the kernel in setup_data.
    """
    e820 = memory_map(memory) if e820 is None else e820
    footprint_end = image.footprint_end()
    entry = KERNEL_LOAD_ADDR + STARTUP_64_OFFSET
    long_mode = bool(image.protocol >= 0x020C and image.header.xloadflags & XLF_KERNEL_64)
    if decompress:
        vmlinux = decompress_payload(image, memory.ram_size)
        if not is_elf(vmlinux):
            raise BootError(f"{image.source}: decompressed payload is not an ELF vmlinux")
        elf = parse_elf(vmlinux, f"{image.source} (decompressed vmlinux)")
        if elf.elf_class != ELFCLASS64 or elf.machine != EM_X86_64:
            raise BootError(f"{image.source}: decompressed vmlinux is not an x86-64 ELF64 image")
        check_segments_fit(memory, elf, f"{image.source} (decompressed vmlinux)")
        footprint_end = max(elf.high, image.decompression_address() + image.header.init_size)
        _check_fits(memory, image, footprint_end)
        load_segments(memory, elf, vmlinux, f"{image.source} (decompressed vmlinux)")
        entry = elf.physical_entry()
        long_mode = True
    else:
        _check_fits(memory, image, footprint_end)
        memory.write(KERNEL_LOAD_ADDR, image.protected_mode_kernel)
        if not long_mode:
            entry = KERNEL_LOAD_ADDR  # the 32-bit entry is the start of the protected-mode code
    placement = None
    if initrd is not None:
        placement = load_initrd(memory, initrd, footprint_end, image.initrd_addr_max, e820)
    cmdline_addr = write_cmdline(memory, cmdline, image.header.cmdline_size, image.source)
    build_zero_page(memory, image.header_bytes, cmdline_addr, placement, e820, image.source, acpi_rsdp_addr,
                    rng_seed)
    if long_mode:
        return long_mode_entry(memory, entry, ZERO_PAGE_ADDR)
    # 32-bit boot protocol: ESI = boot_params; EBP, EDI and EBX must be zero.
    return protected_mode_entry(memory, entry, {"rsi": ZERO_PAGE_ADDR, "rbp": 0, "rdi": 0, "rbx": 0})

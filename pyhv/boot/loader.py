"""``load_kernel``: the one entry point behind ``pyhv run -kernel/-initrd/-append``.

The format is recognised by content, in QEMU's order: a bzImage ("HdrS" at 0x202), then a
multiboot v1 header in the first 8 KiB, then an ELF64 vmlinux entered at its 64-bit entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

from ..cpu_state import CpuBootState
from ..errors import BootError
from ..memory import GuestMemory
from .bzimage import is_bzimage, load_bzimage, parse_bzimage
from .cpu_entry import long_mode_entry
from .e820 import E820Entry, memory_map
from .elf import ELFCLASS64, EM_X86_64, is_elf, load_segments, parse_elf
from .layout import ZERO_PAGE_ADDR
from .multiboot import find_header, load_multiboot
from .zeropage import build_zero_page, load_initrd, synthetic_setup_header, write_cmdline

# A setup header's cmdline_size for kernels that bring none; Linux's COMMAND_LINE_SIZE.
ELF_CMDLINE_SIZE = 2047


def read_kernel_file(kernel: Path, memory: GuestMemory) -> bytes:
    """The kernel file's bytes; refuses files larger than guest RAM before reading them."""
    try:
        size = kernel.stat().st_size
        if not kernel.is_file():
            raise BootError(f"kernel {kernel}: not a regular file")
        if size > memory.ram_size:
            raise BootError(
                f"kernel {kernel}: {size} bytes is larger than guest RAM ({memory.ram_size >> 20} MiB)"
            )
        return kernel.read_bytes()
    except OSError as err:
        raise BootError(f"kernel {kernel}: cannot read: {err.strerror or err}") from err


def load_elf_vmlinux(memory: GuestMemory, kernel: Path, data: bytes, initrd: Optional[Path],
                     cmdline: str, e820: Sequence[E820Entry], acpi_rsdp_addr: Optional[int] = None,
                     rng_seed: Optional[bytes] = None) -> CpuBootState:
    """An uncompressed ELF64 vmlinux: load by PT_LOAD, enter startup_64 with a zero page."""
    source = str(kernel)
    image = parse_elf(data, source)
    if image.elf_class != ELFCLASS64 or image.machine != EM_X86_64:
        raise BootError(f"{source}: an ELF32 kernel needs a multiboot header; pyhv found none")
    load_segments(memory, image, data, source)
    placement = None
    if initrd is not None:
        placement = load_initrd(memory, initrd, image.high, 0xFFFF_FFFF, e820)
    cmdline_addr = write_cmdline(memory, cmdline, ELF_CMDLINE_SIZE, source)
    build_zero_page(memory, synthetic_setup_header(ELF_CMDLINE_SIZE), cmdline_addr, placement,
                    e820, source, acpi_rsdp_addr, rng_seed)
    return long_mode_entry(memory, image.physical_entry(), ZERO_PAGE_ADDR)


def load_kernel(memory: GuestMemory, kernel: Union[str, Path], initrd: Optional[Union[str, Path]] = None,
                cmdline: str = "", decompress: Optional[bool] = None, *,
                reserved: Sequence[Tuple[int, int]] = (), acpi_rsdp_addr: Optional[int] = None,
                rng_seed: Optional[bytes] = None) -> CpuBootState:
    """Load ``kernel`` (bzImage, multiboot v1 or ELF64 vmlinux) and its initrd into ``memory``.

    ``initrd`` is the Linux initial ramdisk, or for multiboot QEMU's comma-separated module
    list (each entry "file args..."). Multiboot guests see the kernel and module names as
    given, so pass the user's strings unchanged to match QEMU exactly. ``decompress``
    (default on) unpacks a bzImage's payload on the host and enters the kernel past its own
    decompressor. ``reserved`` lists [start, end) ranges of RAM the machine keeps (firmware
    or ACPI tables): they are reported reserved in the e820 map / multiboot mmap and the
    initrd avoids them. ``acpi_rsdp_addr`` goes into the Linux zero page, ``rng_seed``
    (:func:`~pyhv.boot.zeropage.boot_rng_seed`) into its setup_data list (multiboot has neither).
    Returns the boot vCPU's entry state; raises :class:`BootError` for unusable input.
    """
    kernel_name = str(kernel)
    kernel = Path(kernel)
    data = read_kernel_file(kernel, memory)
    source = kernel_name
    e820 = memory_map(memory, reserved)
    initrd_path = None if initrd is None else Path(initrd)
    if is_bzimage(data):
        image = parse_bzimage(data, source)
        if decompress is None:
            # Host-side decompression by default; kernels older than protocol 2.08 do not
            # say where their payload is, so they decompress themselves.
            decompress = image.has_payload
        return load_bzimage(memory, image, initrd_path, cmdline, decompress, e820, acpi_rsdp_addr, rng_seed)
    header, bad_checksum_at = find_header(data)
    if header is not None:
        return load_multiboot(memory, kernel_name, data, header, initrd, cmdline, e820)
    elf64 = is_elf(data) and len(data) > 4 and data[4] == ELFCLASS64
    if bad_checksum_at is not None and not elf64:
        raise BootError(f"{source}: multiboot header at offset {bad_checksum_at:#x} has a bad checksum")
    if is_elf(data):
        return load_elf_vmlinux(memory, kernel, data, initrd_path, cmdline, e820, acpi_rsdp_addr, rng_seed)
    raise BootError(
        f"{source}: not a kernel pyhv can boot (no bzImage 'HdrS' header at 0x202, no multiboot header "
        f"in the first 8 KiB, not an ELF file)"
    )

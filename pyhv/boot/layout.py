"""Fixed guest-physical addresses of the structures the loaders build in low memory.

Everything sits below 640 KiB, clear of the real-mode IVT/BDA (first 0x500 bytes) and of
the kernel, which loads at 1 MiB or above. Firecracker uses much the same map.
"""

from __future__ import annotations

BOOT_GDT_ADDR = 0x500
BOOT_IDT_ADDR = 0x520  # an empty IDT: the guest installs its own before enabling interrupts
SETUP_DATA_ADDR = 0x6000  # Linux setup_data entries (the RNG seed), below the zero page
ZERO_PAGE_ADDR = 0x7000  # Linux boot_params
BOOT_STACK_TOP = 0x8FF0  # grows down into [0x8000, 0x8FF0)
PAGE_TABLES_ADDR = 0x9000  # PML4, PDPT, then one page directory per GiB (long mode only)
MULTIBOOT_MMAP_ADDR = 0x9000  # as QEMU: the multiboot memory map, then the info block
MULTIBOOT_INFO_ADDR = 0x9500
CMDLINE_ADDR = 0x20000
CMDLINE_LIMIT = 0xA0000 - 0x1000  # the Linux command line must stay below 640 KiB

KERNEL_LOAD_ADDR = 0x100000  # the bzImage protected-mode kernel (HIGH_MEMORY_START)
PAGE_SIZE = 0x1000


def page_align_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def align_down(value: int, alignment: int) -> int:
    return value & ~(alignment - 1)


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)

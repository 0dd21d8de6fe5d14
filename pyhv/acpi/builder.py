"""``build_acpi``: lay out every ACPI table in guest RAM and return the RSDP's address.

All tables live in [0xE0000, 0xF0000), the upper half of the legacy BIOS window that Linux
scans for the RSDP when the boot protocol does not hand it over, so the RSDP sits at
0xE0000 itself and needs no copy. Linux never uses [0xA0000, 0x100000) as RAM; the e820
map should still list the range as reserved (see :data:`ACPI_RESERVED_RANGES`).

Layout, each table 16-byte aligned (the FACS 64-byte aligned, as the spec requires):
RSDP, FACS, DSDT, FADT, MADT, XSDT, RSDT.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import List, Tuple

from ..boot.bootparams import SETUP_HEADER_MAGIC, BootParams, SetupHeader
from ..boot.layout import ZERO_PAGE_ADDR, align_up
from ..devices.acpi_pm import (GPE0_BLK_LEN, PM1_CNT_LEN, PM1_CNT_OFFSET, PM1_EVT_LEN, PM1_STS_OFFSET,
                               PM_TMR_LEN, PM_TMR_OFFSET, RESET_VALUE, PmPorts)
from ..memory import GuestMemory
from . import tables
from .dsdt import build_dsdt
from .errors import AcpiError

ACPI_REGION_START = 0xE0000
ACPI_REGION_END = 0xF0000
ACPI_RESERVED_RANGES: Tuple[Tuple[int, int], ...] = ((ACPI_REGION_START, ACPI_REGION_END),)
RSDP_ADDRESS = ACPI_REGION_START
TABLE_ALIGNMENT = 16

IO_APIC_ADDRESS = 0xFEC0_0000
LOCAL_APIC_ADDRESS = 0xFEE0_0000
SCI_IRQ = 9
RTC_CENTURY_INDEX = 0x32  # CMOS register holding the century, as on QEMU's pc machine

# The boot protocol version that added boot_params.acpi_rsdp_addr.
RSDP_ADDR_PROTOCOL = 0x020E


@dataclass
class AcpiConfig:
    """What the tables describe.

    ``dsdt_devices`` are encoded AML ``Device()`` terms placed in ``\\_SB`` (see
    :mod:`pyhv.acpi.dsdt` for builders); ``ports`` must match where the machine attaches
    :class:`pyhv.devices.acpi_pm.AcpiPm`. ``i8042``, ``cmos_rtc`` and ``vga`` set the FADT's
    IA-PC boot flags: Linux skips the i8042 probe when the 8042 flag is clear.
    """

    vcpus: int = 1
    dsdt_devices: List[bytes] = field(default_factory=list)
    ports: PmPorts = PmPorts()
    sci_irq: int = SCI_IRQ
    i8042: bool = True
    cmos_rtc: bool = True
    vga: bool = False


def build_fadt(config: AcpiConfig, facs_address: int, dsdt_address: int) -> bytes:
    """A revision-6 FADT for a PC with PIIX4-style fixed hardware on I/O ports."""
    ports = config.ports
    fadt = tables.Fadt()
    fadt.firmware_ctrl = facs_address
    fadt.dsdt = dsdt_address
    fadt.x_firmware_ctrl = facs_address
    fadt.x_dsdt = dsdt_address
    fadt.preferred_pm_profile = tables.PM_PROFILE_UNSPECIFIED
    fadt.sci_int = config.sci_irq
    # SMI_CMD 0: no SMM handshake; the PM device starts with SCI_EN set (always in ACPI mode).
    fadt.smi_cmd = 0
    evt, cnt, tmr = (ports.pm_base + PM1_STS_OFFSET, ports.pm_base + PM1_CNT_OFFSET,
                     ports.pm_base + PM_TMR_OFFSET)
    fadt.pm1a_evt_blk, fadt.pm1a_cnt_blk, fadt.pm_tmr_blk, fadt.gpe0_blk = evt, cnt, tmr, ports.gpe0_base
    fadt.pm1_evt_len, fadt.pm1_cnt_len, fadt.pm_tmr_len = PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN
    fadt.gpe0_blk_len = GPE0_BLK_LEN
    fadt.x_pm1a_evt_blk = tables.io_register(evt, PM1_EVT_LEN, tables.ACCESS_WORD)
    fadt.x_pm1a_cnt_blk = tables.io_register(cnt, PM1_CNT_LEN, tables.ACCESS_WORD)
    fadt.x_pm_tmr_blk = tables.io_register(tmr, PM_TMR_LEN, tables.ACCESS_DWORD)
    fadt.x_gpe0_blk = tables.io_register(ports.gpe0_base, GPE0_BLK_LEN, tables.ACCESS_BYTE)
    # No C2/C3 states: latencies above 100 and 1000 us tell the OS they are absent.
    fadt.p_lvl2_lat = 101
    fadt.p_lvl3_lat = 1001
    fadt.century = RTC_CENTURY_INDEX if config.cmos_rtc else 0
    fadt.iapc_boot_arch = (tables.BOOT_ARCH_LEGACY_DEVICES
                           | (tables.BOOT_ARCH_8042 if config.i8042 else 0)
                           | (0 if config.vga else tables.BOOT_ARCH_VGA_NOT_PRESENT)
                           | (0 if config.cmos_rtc else tables.BOOT_ARCH_CMOS_RTC_NOT_PRESENT))
    # PWR_BUTTON clear: the power button is the fixed-feature one in PM1 (PWRBTN_STS/EN).
    # SLP_BUTTON set: there is no sleep button. The PM timer is 24 bits (TMR_VAL_EXT clear).
    fadt.flags = (tables.FADT_WBINVD | tables.FADT_PROC_C1 | tables.FADT_SLP_BUTTON
                  | tables.FADT_RESET_REG_SUP | tables.FADT_USE_PLATFORM_CLOCK)
    fadt.reset_reg = tables.io_register(ports.reset, 1, tables.ACCESS_BYTE)
    fadt.reset_value = RESET_VALUE
    return tables.fadt_bytes(fadt)


class _Allocator:
    """Hands out aligned addresses in the ACPI region, refusing to run past its end."""

    def __init__(self, start: int, end: int) -> None:
        self.next = start
        self.end = end

    def place(self, what: str, size: int, alignment: int = TABLE_ALIGNMENT) -> int:
        address = align_up(self.next, alignment)
        if address + size > self.end:
            raise AcpiError(
                f"ACPI tables do not fit in [{ACPI_REGION_START:#x}, {ACPI_REGION_END:#x}): the {what} of "
                f"{size} bytes would end at {address + size:#x}; list fewer DSDT devices"
            )
        self.next = address + size
        return address


def build_acpi(memory: GuestMemory, config: AcpiConfig) -> int:
    """Write the RSDP, XSDT, RSDT, FADT, FACS, MADT and DSDT into [0xE0000, 0xF0000) of
    ``memory`` and return the RSDP's guest physical address (0xE0000)."""
    if config.vcpus < 1:
        raise AcpiError(f"ACPI: a machine needs at least one vCPU, got {config.vcpus}")
    if not memory.contains(ACPI_REGION_START, ACPI_REGION_END - ACPI_REGION_START):
        raise AcpiError(
            f"ACPI: guest RAM of {memory.ram_size:#x} bytes does not cover the table area "
            f"[{ACPI_REGION_START:#x}, {ACPI_REGION_END:#x}); give the guest at least 1 MiB"
        )
    rsdp_size = ctypes.sizeof(tables.Rsdp)
    dsdt = build_dsdt(config.vcpus, config.dsdt_devices)
    madt = tables.madt_bytes(config.vcpus, IO_APIC_ADDRESS, LOCAL_APIC_ADDRESS, config.sci_irq)
    fadt_size = ctypes.sizeof(tables.Fadt)
    header_size = ctypes.sizeof(tables.TableHeader)

    space = _Allocator(ACPI_REGION_START, ACPI_REGION_END)
    rsdp_address = space.place("RSDP", rsdp_size)
    facs_address = space.place("FACS", tables.FACS_LENGTH, tables.FACS_ALIGNMENT)
    dsdt_address = space.place("DSDT", len(dsdt))
    fadt_address = space.place("FADT", fadt_size)
    madt_address = space.place("MADT", len(madt))
    pointed_to = [fadt_address, madt_address]
    xsdt_address = space.place("XSDT", header_size + 8 * len(pointed_to))
    rsdt_address = space.place("RSDT", header_size + 4 * len(pointed_to))

    memory.fill(ACPI_REGION_START, ACPI_REGION_END - ACPI_REGION_START)
    memory.write(facs_address, tables.facs_bytes())
    memory.write(dsdt_address, dsdt)
    memory.write(fadt_address, build_fadt(config, facs_address, dsdt_address))
    memory.write(madt_address, madt)
    memory.write(xsdt_address, tables.xsdt_bytes(pointed_to))
    memory.write(rsdt_address, tables.rsdt_bytes(pointed_to))
    memory.write(rsdp_address, tables.rsdp_bytes(xsdt_address, rsdt_address))
    return rsdp_address


def set_boot_params_rsdp(memory: GuestMemory, rsdp_address: int, zero_page_address: int = ZERO_PAGE_ADDR) -> bool:
    """Tell a Linux kernel where the RSDP is through boot_params.acpi_rsdp_addr.

    Call after the loader has written the zero page. Returns False, writing nothing, when
    there is no Linux zero page there (a multiboot kernel) or its boot protocol predates
    2.14; such kernels find the RSDP by scanning 0xE0000-0xFFFFF.
    """
    header_address = zero_page_address + BootParams.hdr.offset
    header = memory.read_obj(header_address, SetupHeader)
    if header.header != SETUP_HEADER_MAGIC or header.version < RSDP_ADDR_PROTOCOL:
        return False
    memory.write_u64(zero_page_address + BootParams.acpi_rsdp_addr.offset, rsdp_address)
    return True

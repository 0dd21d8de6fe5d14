"""The fixed-layout ACPI tables as ctypes structures: RSDP, the table header, RSDT/XSDT, FADT,
FACS and MADT (ACPI 6.4 sections 5.2.5 to 5.2.12).

Field offsets follow the spec's tables; the tests check them against the documented
numbers, so code names fields instead of offsets. Each ``*_bytes`` function returns one
finished table with its checksum(s) set.
"""

from __future__ import annotations

import ctypes
from typing import Sequence

from .errors import AcpiError

OEM_ID = b"PYHV  "  # six bytes, space padded
OEM_TABLE_ID = b"PYHVMACH"
OEM_REVISION = 1
CREATOR_ID = b"PYHV"
CREATOR_REVISION = 1

RSDP_SIGNATURE = b"RSD PTR "
RSDP_REVISION = 2  # ACPI 2.0+: the structure carries the XSDT address and an extended checksum
RSDP_V1_LENGTH = 20  # the ACPI 1.0 part, covered by the first checksum

FADT_REVISION = 6
FADT_MINOR_REVISION = 0
MADT_REVISION = 5  # ACPI 6.0+
DSDT_REVISION = 2  # 2 and up: AML integers are 64 bits wide
XSDT_REVISION = 1
RSDT_REVISION = 1
FACS_VERSION = 2
FACS_LENGTH = 64
FACS_ALIGNMENT = 64

# Generic Address Structure (section 5.2.3.2).
GAS_SYSTEM_MEMORY = 0
GAS_SYSTEM_IO = 1
ACCESS_UNDEFINED = 0
ACCESS_BYTE = 1
ACCESS_WORD = 2
ACCESS_DWORD = 3

# FADT Flags (Table 5.10).
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_PWR_BUTTON = 1 << 4  # set: the power button is a control-method device; clear: fixed feature
FADT_SLP_BUTTON = 1 << 5  # set: no fixed-feature sleep button
FADT_RTC_S4 = 1 << 7
FADT_TMR_VAL_EXT = 1 << 8  # set: the PM timer is 32 bits wide; clear: 24 bits
FADT_RESET_REG_SUP = 1 << 10
FADT_USE_PLATFORM_CLOCK = 1 << 15
FADT_HW_REDUCED_ACPI = 1 << 20

# FADT IA-PC boot architecture flags (Table 5.11).
BOOT_ARCH_LEGACY_DEVICES = 1 << 0
BOOT_ARCH_8042 = 1 << 1
BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2
BOOT_ARCH_MSI_NOT_SUPPORTED = 1 << 3
BOOT_ARCH_CMOS_RTC_NOT_PRESENT = 1 << 5

PM_PROFILE_UNSPECIFIED = 0

# MADT (section 5.2.12).
MADT_PCAT_COMPAT = 1 << 0
MADT_TYPE_LOCAL_APIC = 0
MADT_TYPE_IO_APIC = 1
MADT_TYPE_INTERRUPT_OVERRIDE = 2
MADT_TYPE_LOCAL_APIC_NMI = 4
LOCAL_APIC_ENABLED = 1 << 0
# MPS INTI flags: polarity in bits 0-1, trigger mode in bits 2-3.
INTI_POLARITY_ACTIVE_HIGH = 0b01
INTI_POLARITY_ACTIVE_LOW = 0b11
INTI_TRIGGER_EDGE = 0b01 << 2
INTI_TRIGGER_LEVEL = 0b11 << 2
ISA_BUS = 0
IO_APIC_ID = 0
ALL_PROCESSORS = 0xFF  # processor UID meaning "every processor" in a Local APIC NMI entry


class GenericAddress(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("space_id", ctypes.c_uint8),
        ("bit_width", ctypes.c_uint8),
        ("bit_offset", ctypes.c_uint8),
        ("access_size", ctypes.c_uint8),
        ("address", ctypes.c_uint64),
    ]


def io_register(port: int, length: int, access_size: int = ACCESS_UNDEFINED) -> GenericAddress:
    """A GAS describing ``length`` bytes of I/O ports at ``port`` (all zero when ``port`` is 0)."""
    if port == 0:
        return GenericAddress()
    return GenericAddress(GAS_SYSTEM_IO, length * 8, 0, access_size, port)


class Rsdp(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 8),  # 0
        ("checksum", ctypes.c_uint8),  # 8: covers the first 20 bytes
        ("oem_id", ctypes.c_char * 6),  # 9
        ("revision", ctypes.c_uint8),  # 15
        ("rsdt_address", ctypes.c_uint32),  # 16
        ("length", ctypes.c_uint32),  # 20
        ("xsdt_address", ctypes.c_uint64),  # 24
        ("extended_checksum", ctypes.c_uint8),  # 32: covers all 36 bytes
        ("reserved", ctypes.c_uint8 * 3),
    ]


class TableHeader(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 4),  # 0
        ("length", ctypes.c_uint32),  # 4
        ("revision", ctypes.c_uint8),  # 8
        ("checksum", ctypes.c_uint8),  # 9
        ("oem_id", ctypes.c_char * 6),  # 10
        ("oem_table_id", ctypes.c_char * 8),  # 16
        ("oem_revision", ctypes.c_uint32),  # 24
        ("creator_id", ctypes.c_char * 4),  # 28
        ("creator_revision", ctypes.c_uint32),  # 32
    ]


class Fadt(ctypes.LittleEndianStructure):
    """The Fixed ACPI Description Table, revision 6 (276 bytes)."""

    _pack_ = 1
    _fields_ = [
        ("header", TableHeader),  # 0
        ("firmware_ctrl", ctypes.c_uint32),  # 36
        ("dsdt", ctypes.c_uint32),  # 40
        ("reserved0", ctypes.c_uint8),  # 44
        ("preferred_pm_profile", ctypes.c_uint8),  # 45
        ("sci_int", ctypes.c_uint16),  # 46
        ("smi_cmd", ctypes.c_uint32),  # 48
        ("acpi_enable", ctypes.c_uint8),  # 52
        ("acpi_disable", ctypes.c_uint8),  # 53
        ("s4bios_req", ctypes.c_uint8),  # 54
        ("pstate_cnt", ctypes.c_uint8),  # 55
        ("pm1a_evt_blk", ctypes.c_uint32),  # 56
        ("pm1b_evt_blk", ctypes.c_uint32),  # 60
        ("pm1a_cnt_blk", ctypes.c_uint32),  # 64
        ("pm1b_cnt_blk", ctypes.c_uint32),  # 68
        ("pm2_cnt_blk", ctypes.c_uint32),  # 72
        ("pm_tmr_blk", ctypes.c_uint32),  # 76
        ("gpe0_blk", ctypes.c_uint32),  # 80
        ("gpe1_blk", ctypes.c_uint32),  # 84
        ("pm1_evt_len", ctypes.c_uint8),  # 88
        ("pm1_cnt_len", ctypes.c_uint8),  # 89
        ("pm2_cnt_len", ctypes.c_uint8),  # 90
        ("pm_tmr_len", ctypes.c_uint8),  # 91
        ("gpe0_blk_len", ctypes.c_uint8),  # 92
        ("gpe1_blk_len", ctypes.c_uint8),  # 93
        ("gpe1_base", ctypes.c_uint8),  # 94
        ("cst_cnt", ctypes.c_uint8),  # 95
        ("p_lvl2_lat", ctypes.c_uint16),  # 96
        ("p_lvl3_lat", ctypes.c_uint16),  # 98
        ("flush_size", ctypes.c_uint16),  # 100
        ("flush_stride", ctypes.c_uint16),  # 102
        ("duty_offset", ctypes.c_uint8),  # 104
        ("duty_width", ctypes.c_uint8),  # 105
        ("day_alrm", ctypes.c_uint8),  # 106
        ("mon_alrm", ctypes.c_uint8),  # 107
        ("century", ctypes.c_uint8),  # 108
        ("iapc_boot_arch", ctypes.c_uint16),  # 109
        ("reserved1", ctypes.c_uint8),  # 111
        ("flags", ctypes.c_uint32),  # 112
        ("reset_reg", GenericAddress),  # 116
        ("reset_value", ctypes.c_uint8),  # 128
        ("arm_boot_arch", ctypes.c_uint16),  # 129
        ("minor_version", ctypes.c_uint8),  # 131
        ("x_firmware_ctrl", ctypes.c_uint64),  # 132
        ("x_dsdt", ctypes.c_uint64),  # 140
        ("x_pm1a_evt_blk", GenericAddress),  # 148
        ("x_pm1b_evt_blk", GenericAddress),  # 160
        ("x_pm1a_cnt_blk", GenericAddress),  # 172
        ("x_pm1b_cnt_blk", GenericAddress),  # 184
        ("x_pm2_cnt_blk", GenericAddress),  # 196
        ("x_pm_tmr_blk", GenericAddress),  # 208
        ("x_gpe0_blk", GenericAddress),  # 220
        ("x_gpe1_blk", GenericAddress),  # 232
        ("sleep_control_reg", GenericAddress),  # 244
        ("sleep_status_reg", GenericAddress),  # 256
        ("hypervisor_vendor_id", ctypes.c_uint64),  # 268
    ]


class Facs(ctypes.LittleEndianStructure):
    """The Firmware ACPI Control Structure: no header, no checksum, 64-byte aligned."""

    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 4),  # 0
        ("length", ctypes.c_uint32),  # 4
        ("hardware_signature", ctypes.c_uint32),  # 8
        ("firmware_waking_vector", ctypes.c_uint32),  # 12
        ("global_lock", ctypes.c_uint32),  # 16
        ("flags", ctypes.c_uint32),  # 20
        ("x_firmware_waking_vector", ctypes.c_uint64),  # 24
        ("version", ctypes.c_uint8),  # 32
        ("reserved0", ctypes.c_uint8 * 3),  # 33
        ("ospm_flags", ctypes.c_uint32),  # 36
        ("reserved1", ctypes.c_uint8 * 24),  # 40
    ]


class MadtHeader(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("header", TableHeader),  # 0
        ("local_apic_address", ctypes.c_uint32),  # 36
        ("flags", ctypes.c_uint32),  # 40
    ]


class MadtLocalApic(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("length", ctypes.c_uint8),
        ("processor_uid", ctypes.c_uint8),
        ("apic_id", ctypes.c_uint8),
        ("flags", ctypes.c_uint32),
    ]


class MadtIoApic(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("length", ctypes.c_uint8),
        ("io_apic_id", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8),
        ("address", ctypes.c_uint32),
        ("gsi_base", ctypes.c_uint32),
    ]


class MadtInterruptOverride(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("length", ctypes.c_uint8),
        ("bus", ctypes.c_uint8),
        ("source", ctypes.c_uint8),
        ("gsi", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),
    ]


class MadtLocalApicNmi(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("length", ctypes.c_uint8),
        ("processor_uid", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("lint", ctypes.c_uint8),
    ]


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` (with a zero checksum field) sum to 0 modulo 256."""
    return (-sum(data)) & 0xFF


def _fill_header(header: TableHeader, signature: bytes, length: int, revision: int) -> None:
    header.signature = signature
    header.length = length
    header.revision = revision
    header.oem_id = OEM_ID
    header.oem_table_id = OEM_TABLE_ID
    header.oem_revision = OEM_REVISION
    header.creator_id = CREATOR_ID
    header.creator_revision = CREATOR_REVISION


def _finish(table: bytes) -> bytes:
    """Set the header checksum (byte 9) of a complete table."""
    data = bytearray(table)
    data[TableHeader.checksum.offset] = 0
    data[TableHeader.checksum.offset] = checksum(data)
    return bytes(data)


def table_bytes(signature: bytes, revision: int, body: bytes) -> bytes:
    """A table made of the standard header followed by ``body``."""
    header = TableHeader()
    _fill_header(header, signature, ctypes.sizeof(TableHeader) + len(body), revision)
    return _finish(bytes(header) + body)


def rsdp_bytes(xsdt_address: int, rsdt_address: int) -> bytes:
    rsdp = Rsdp()
    rsdp.signature = RSDP_SIGNATURE
    rsdp.oem_id = OEM_ID
    rsdp.revision = RSDP_REVISION
    rsdp.rsdt_address = rsdt_address
    rsdp.length = ctypes.sizeof(Rsdp)
    rsdp.xsdt_address = xsdt_address
    rsdp.checksum = checksum(bytes(rsdp)[:RSDP_V1_LENGTH])
    rsdp.extended_checksum = checksum(bytes(rsdp))
    return bytes(rsdp)


def xsdt_bytes(table_addresses: Sequence[int]) -> bytes:
    return table_bytes(b"XSDT", XSDT_REVISION, b"".join(a.to_bytes(8, "little") for a in table_addresses))


def rsdt_bytes(table_addresses: Sequence[int]) -> bytes:
    for address in table_addresses:
        if address >= 1 << 32:
            raise AcpiError(f"RSDT: table address {address:#x} is above 4 GiB")
    return table_bytes(b"RSDT", RSDT_REVISION, b"".join(a.to_bytes(4, "little") for a in table_addresses))


def facs_bytes() -> bytes:
    facs = Facs()
    facs.signature = b"FACS"
    facs.length = FACS_LENGTH
    facs.version = FACS_VERSION
    return bytes(facs)


def fadt_bytes(fadt: Fadt) -> bytes:
    """Fill the FADT's header (signature, length, revision) and checksum."""
    _fill_header(fadt.header, b"FACP", ctypes.sizeof(Fadt), FADT_REVISION)
    fadt.minor_version = FADT_MINOR_REVISION
    return _finish(bytes(fadt))


def madt_bytes(vcpus: int, io_apic_address: int, local_apic_address: int, sci_irq: int) -> bytes:
    """The MADT of a PC: one Local APIC per vCPU (APIC ID = UID = index), one IOAPIC with
    GSI base 0, the two ISA overrides of every PC chipset, and LINT1 as NMI on every CPU."""
    # APIC ID 0xFF is the xAPIC broadcast address, so 255 CPUs is the xAPIC limit.
    if not 1 <= vcpus <= 255:
        raise AcpiError(f"MADT: {vcpus} vCPUs requested, 1 to 255 fit in xAPIC entries")
    if not 0 <= sci_irq <= 15:
        raise AcpiError(f"MADT: SCI IRQ {sci_irq} is not an ISA IRQ (0-15)")
    entries = []
    for index in range(vcpus):
        entries.append(MadtLocalApic(MADT_TYPE_LOCAL_APIC, ctypes.sizeof(MadtLocalApic), index, index,
                                     LOCAL_APIC_ENABLED))
    # IOAPIC ID 0, as QEMU reports it and as KVM's in-kernel IOAPIC resets its ID register.
    entries.append(MadtIoApic(MADT_TYPE_IO_APIC, ctypes.sizeof(MadtIoApic), IO_APIC_ID, 0, io_apic_address, 0))
    # The PIT's IRQ 0 is wired to IOAPIC pin 2 on every PC; ISA IRQs are edge, active high.
    entries.append(MadtInterruptOverride(MADT_TYPE_INTERRUPT_OVERRIDE, ctypes.sizeof(MadtInterruptOverride),
                                         ISA_BUS, 0, 2, INTI_POLARITY_ACTIVE_HIGH | INTI_TRIGGER_EDGE))
    # The SCI is a shareable level-triggered interrupt, active high as on PIIX4 (spec 5.2.12.5).
    entries.append(MadtInterruptOverride(MADT_TYPE_INTERRUPT_OVERRIDE, ctypes.sizeof(MadtInterruptOverride),
                                         ISA_BUS, sci_irq, sci_irq,
                                         INTI_POLARITY_ACTIVE_HIGH | INTI_TRIGGER_LEVEL))
    entries.append(MadtLocalApicNmi(MADT_TYPE_LOCAL_APIC_NMI, ctypes.sizeof(MadtLocalApicNmi), ALL_PROCESSORS,
                                    0, 1))
    head = MadtHeader()
    head.local_apic_address = local_apic_address
    head.flags = MADT_PCAT_COMPAT
    body = bytes(head)[ctypes.sizeof(TableHeader):] + b"".join(bytes(e) for e in entries)
    return table_bytes(b"APIC", MADT_REVISION, body)

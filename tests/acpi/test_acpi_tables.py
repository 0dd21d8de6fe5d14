"""Fixed-layout tables: field offsets against the ACPI 6.4 spec, checksums, MADT contents."""

from __future__ import annotations

import ctypes
import struct

import pytest

from pyhv.acpi import tables
from pyhv.acpi.errors import AcpiError


@pytest.mark.parametrize("structure,field,offset", [
    # Table 5.3 (RSDP)
    (tables.Rsdp, "checksum", 8), (tables.Rsdp, "oem_id", 9), (tables.Rsdp, "revision", 15),
    (tables.Rsdp, "rsdt_address", 16), (tables.Rsdp, "length", 20), (tables.Rsdp, "xsdt_address", 24),
    (tables.Rsdp, "extended_checksum", 32),
    # Table 5.4 (header)
    (tables.TableHeader, "length", 4), (tables.TableHeader, "checksum", 9),
    (tables.TableHeader, "oem_table_id", 16), (tables.TableHeader, "creator_revision", 32),
    # Table 5.9 (FADT)
    (tables.Fadt, "firmware_ctrl", 36), (tables.Fadt, "dsdt", 40), (tables.Fadt, "sci_int", 46),
    (tables.Fadt, "smi_cmd", 48), (tables.Fadt, "pm1a_evt_blk", 56), (tables.Fadt, "pm1a_cnt_blk", 64),
    (tables.Fadt, "pm_tmr_blk", 76), (tables.Fadt, "gpe0_blk", 80), (tables.Fadt, "pm1_evt_len", 88),
    (tables.Fadt, "pm_tmr_len", 91), (tables.Fadt, "gpe0_blk_len", 92), (tables.Fadt, "century", 108),
    (tables.Fadt, "iapc_boot_arch", 109), (tables.Fadt, "flags", 112), (tables.Fadt, "reset_reg", 116),
    (tables.Fadt, "reset_value", 128), (tables.Fadt, "minor_version", 131),
    (tables.Fadt, "x_firmware_ctrl", 132), (tables.Fadt, "x_dsdt", 140), (tables.Fadt, "x_pm1a_evt_blk", 148),
    (tables.Fadt, "x_pm1a_cnt_blk", 172), (tables.Fadt, "x_pm_tmr_blk", 208), (tables.Fadt, "x_gpe0_blk", 220),
    (tables.Fadt, "sleep_control_reg", 244), (tables.Fadt, "hypervisor_vendor_id", 268),
    # Table 5.14 (FACS)
    (tables.Facs, "hardware_signature", 8), (tables.Facs, "global_lock", 16),
    (tables.Facs, "x_firmware_waking_vector", 24), (tables.Facs, "version", 32), (tables.Facs, "ospm_flags", 36),
    # Table 5.19 (MADT)
    (tables.MadtHeader, "local_apic_address", 36), (tables.MadtHeader, "flags", 40),
])
def test_field_offsets_follow_the_spec(structure: type, field: str, offset: int) -> None:
    assert getattr(structure, field).offset == offset


@pytest.mark.parametrize("structure,size", [
    (tables.Rsdp, 36), (tables.TableHeader, 36), (tables.GenericAddress, 12), (tables.Fadt, 276),
    (tables.Facs, 64), (tables.MadtLocalApic, 8), (tables.MadtIoApic, 12), (tables.MadtInterruptOverride, 10),
    (tables.MadtLocalApicNmi, 6),
])
def test_structure_sizes(structure: type, size: int) -> None:
    assert ctypes.sizeof(structure) == size


def test_rsdp_checksums_and_pointers() -> None:
    rsdp = tables.rsdp_bytes(0x1_2345_6780, 0xE0100)
    assert rsdp[:8] == b"RSD PTR "
    assert sum(rsdp[:20]) % 256 == 0
    assert sum(rsdp) % 256 == 0
    assert rsdp[15] == 2
    assert struct.unpack_from("<IIQ", rsdp, 16) == (0xE0100, 36, 0x1_2345_6780)


def test_every_table_sums_to_zero_and_states_its_length() -> None:
    built = [
        tables.xsdt_bytes([0xE0100, 0xE0200]),
        tables.rsdt_bytes([0xE0100, 0xE0200]),
        tables.madt_bytes(3, 0xFEC00000, 0xFEE00000, 9),
        tables.fadt_bytes(tables.Fadt()),
        tables.table_bytes(b"TEST", 1, b"\x01\x02\x03"),
    ]
    for table in built:
        assert sum(table) % 256 == 0, table[:4]
        assert struct.unpack_from("<I", table, 4)[0] == len(table)
        assert table[10:16] == b"PYHV  "


def test_xsdt_and_rsdt_entries() -> None:
    xsdt = tables.xsdt_bytes([0xE0100, 0x1_0000_0000])
    assert xsdt[:4] == b"XSDT" and len(xsdt) == 36 + 16
    assert struct.unpack_from("<QQ", xsdt, 36) == (0xE0100, 0x1_0000_0000)
    rsdt = tables.rsdt_bytes([0xE0100])
    assert rsdt[:4] == b"RSDT" and struct.unpack_from("<I", rsdt, 36)[0] == 0xE0100
    with pytest.raises(AcpiError, match="RSDT: table address 0x100000000 is above 4 GiB"):
        tables.rsdt_bytes([0x1_0000_0000])


def _madt_entries(madt: bytes):
    entries = []
    offset = 44
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        assert length >= 2
        entries.append((kind, madt[offset:offset + length]))
        offset += length
    assert offset == len(madt)
    return entries


def test_madt_describes_a_pc() -> None:
    madt = tables.madt_bytes(4, 0xFEC00000, 0xFEE00000, 9)
    assert madt[:4] == b"APIC"
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)  # LAPIC address, PCAT_COMPAT
    entries = _madt_entries(madt)
    lapics = [e for k, e in entries if k == 0]
    assert [(e[2], e[3], struct.unpack_from("<I", e, 4)[0]) for e in lapics] == [(i, i, 1) for i in range(4)]
    (ioapic,) = [e for k, e in entries if k == 1]
    assert struct.unpack_from("<II", ioapic, 4) == (0xFEC00000, 0)
    overrides = {e[3]: struct.unpack_from("<IH", e, 4) for k, e in entries if k == 2}
    assert overrides == {0: (2, 0b0101), 9: (9, 0b1101)}  # IRQ0→GSI2 edge high; SCI level high
    (nmi,) = [e for k, e in entries if k == 4]
    assert nmi == bytes([4, 6, 0xFF, 0, 0, 1])  # all processors, LINT1


@pytest.mark.parametrize("vcpus", [0, 256])
def test_madt_refuses_impossible_cpu_counts(vcpus: int) -> None:
    with pytest.raises(AcpiError, match=f"MADT: {vcpus} vCPUs requested, 1 to 255"):
        tables.madt_bytes(vcpus, 0xFEC00000, 0xFEE00000, 9)


def test_madt_refuses_a_non_isa_sci() -> None:
    with pytest.raises(AcpiError, match="SCI IRQ 20 is not an ISA IRQ"):
        tables.madt_bytes(1, 0xFEC00000, 0xFEE00000, 20)


def test_facs() -> None:
    facs = tables.facs_bytes()
    assert len(facs) == 64 and facs[:4] == b"FACS"
    assert struct.unpack_from("<I", facs, 4)[0] == 64 and facs[32] == 2


def test_io_register_gas() -> None:
    gas = bytes(tables.io_register(0x608, 4, tables.ACCESS_DWORD))
    assert gas == bytes([1, 32, 0, 3]) + (0x608).to_bytes(8, "little")
    assert bytes(tables.io_register(0, 4)) == bytes(12)

"""build_acpi end to end: found the way Linux finds it, every table checked, iasl -d clean."""

from __future__ import annotations

import struct
from typing import Dict, List

import pytest

from pyhv.acpi import ACPI_RESERVED_RANGES, AcpiConfig, AcpiError, build_acpi, set_boot_params_rsdp
from pyhv.acpi.dsdt import pc_legacy_devices, virtio_mmio
from pyhv.boot.bootparams import BootParams
from pyhv.boot.e820 import E820_RAM, E820_RESERVED, memory_map
from pyhv.bus import Bus
from pyhv.devices.acpi_pm import AcpiPm, PmPorts, attach_acpi_pm
from pyhv.irq import RecordingIrqLine
from pyhv.lifecycle import Lifecycle, Shutdown
from pyhv.memory import GuestMemory, MiB

BIOS_SCAN_START, BIOS_SCAN_END = 0xE0000, 0x100000
TABLE_AREA = (0xE0000, 0xF0000)


@pytest.fixture
def memory():
    mem = GuestMemory(16 * MiB)
    yield mem
    mem.close()


def pc_config(vcpus: int = 2) -> AcpiConfig:
    devices = pc_legacy_devices([(0x3F8, 4)]) + [virtio_mmio(0, 0xD000_0000, 0x200, 5)]
    return AcpiConfig(vcpus=vcpus, dsdt_devices=devices)


def scan_for_rsdp(memory: GuestMemory) -> List[int]:
    """Every address Linux's BIOS-area scan would accept: 16-byte aligned, signature, checksum."""
    found = []
    for address in range(BIOS_SCAN_START, BIOS_SCAN_END, 16):
        if memory.read(address, 8) == b"RSD PTR " and sum(memory.read(address, 20)) % 256 == 0:
            found.append(address)
    return found


def read_table(memory: GuestMemory, address: int) -> bytes:
    length = memory.read_u32(address + 4)
    return memory.read(address, length)


def walk(memory: GuestMemory, rsdp_address: int) -> Dict[str, tuple]:
    """{signature: (address, bytes)} of every table reachable from the RSDP through the XSDT."""
    rsdp = memory.read(rsdp_address, 36)
    xsdt_address = struct.unpack_from("<Q", rsdp, 24)[0]
    rsdt_address = struct.unpack_from("<I", rsdp, 16)[0]
    result = {"RSDP": (rsdp_address, rsdp), "XSDT": (xsdt_address, read_table(memory, xsdt_address)),
              "RSDT": (rsdt_address, read_table(memory, rsdt_address))}
    xsdt = result["XSDT"][1]
    for index in range((len(xsdt) - 36) // 8):
        address = struct.unpack_from("<Q", xsdt, 36 + 8 * index)[0]
        table = read_table(memory, address)
        result[table[:4].decode()] = (address, table)
    fadt = result["FACP"][1]
    facs_address, dsdt_address = struct.unpack_from("<II", fadt, 36)
    result["FACS"] = (facs_address, memory.read(facs_address, 64))
    result["DSDT"] = (dsdt_address, read_table(memory, dsdt_address))
    return result


def test_rsdp_is_where_linux_scans_and_where_build_says(memory: GuestMemory) -> None:
    rsdp_address = build_acpi(memory, pc_config())
    assert scan_for_rsdp(memory) == [rsdp_address]
    assert sum(memory.read(rsdp_address, 36)) % 256 == 0


def test_every_table_is_checksummed_placed_and_distinct(memory: GuestMemory) -> None:
    found = walk(memory, build_acpi(memory, pc_config()))
    assert set(found) == {"RSDP", "XSDT", "RSDT", "FACP", "APIC", "FACS", "DSDT"}
    spans = []
    for signature, (address, table) in found.items():
        if signature not in ("RSDP", "FACS"):
            assert sum(table) % 256 == 0, signature
            assert struct.unpack_from("<I", table, 4)[0] == len(table), signature
        assert TABLE_AREA[0] <= address and address + len(table) <= TABLE_AREA[1], signature
        assert address % 16 == 0, signature
        spans.append((address, address + len(table)))
    spans.sort()
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), "tables overlap"
    assert found["FACS"][0] % 64 == 0
    rsdt = found["RSDT"][1]
    rsdt_entries = [struct.unpack_from("<I", rsdt, 36 + 4 * i)[0] for i in range((len(rsdt) - 36) // 4)]
    assert rsdt_entries == [found["FACP"][0], found["APIC"][0]]


def test_fadt_fields_read_back(memory: GuestMemory) -> None:
    found = walk(memory, build_acpi(memory, pc_config()))
    fadt = found["FACP"][1]
    assert len(fadt) == 276 and fadt[8] == 6
    assert struct.unpack_from("<H", fadt, 46)[0] == 9  # SCI_INT
    assert struct.unpack_from("<I", fadt, 48)[0] == 0  # SMI_CMD: no SMM handshake
    assert struct.unpack_from("<IIII", fadt, 56) == (0x600, 0, 0x604, 0)  # PM1a/b EVT, PM1a/b CNT
    assert struct.unpack_from("<II", fadt, 76) == (0x608, 0xAFE0)  # PM_TMR, GPE0
    assert tuple(fadt[88:93]) == (4, 2, 0, 4, 4)  # PM1_EVT, PM1_CNT, PM2_CNT, PM_TMR, GPE0 lengths
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & (1 << 0)  # WBINVD
    assert not flags & (1 << 4)  # PWR_BUTTON clear: fixed-feature power button
    assert flags & (1 << 10)  # RESET_REG_SUP
    assert not flags & (1 << 20)  # not hardware-reduced
    boot_arch = struct.unpack_from("<H", fadt, 109)[0]
    assert boot_arch & 0b11 == 0b11  # legacy devices, 8042
    assert not boot_arch & (1 << 5)  # a CMOS RTC is present
    assert fadt[116:128] == bytes([1, 8, 0, 1]) + (0xCF9).to_bytes(8, "little")  # RESET_REG
    assert fadt[128] == 0x06
    assert struct.unpack_from("<QQ", fadt, 132) == (found["FACS"][0], found["DSDT"][0])  # X_ fields
    assert fadt[148:160] == bytes([1, 32, 0, 2]) + (0x600).to_bytes(8, "little")  # X_PM1a_EVT_BLK
    assert fadt[172:184] == bytes([1, 16, 0, 2]) + (0x604).to_bytes(8, "little")  # X_PM1a_CNT_BLK
    assert fadt[208:220] == bytes([1, 32, 0, 3]) + (0x608).to_bytes(8, "little")  # X_PM_TMR_BLK


def test_iasl_disassembles_every_table_without_complaint(memory: GuestMemory, disassemble) -> None:
    found = walk(memory, build_acpi(memory, pc_config(vcpus=3)))
    listings = {sig: disassemble(sig.lower(), table) for sig, (_, table) in found.items() if sig != "RSDP"}
    apic = listings["APIC"]
    assert "Address : FEC00000" in apic
    assert "Local Apic Address : FEE00000" in apic
    assert apic.count("[Processor Local APIC]") == 3
    assert apic.count("[Interrupt Source Override]") == 2
    assert "Interrupt Input LINT : 01" in apic
    facp = listings["FACP"]
    for text in ("PM1A Event Block Address : 00000600", "PM1A Control Block Address : 00000604",
                 "PM Timer Block Address : 00000608", "SCI Interrupt : 0009", "Address : 0000000000000CF9",
                 "Value to cause reset : 06", "Reset Register Supported (V2) : 1",
                 "Control Method Power Button (V1) : 0", "8042 Present on ports 60/64 (V2) : 1"):
        assert text in facp
    assert "Name (\\_S5, Package (0x04)" in listings["DSDT"]
    assert "Device (C002)" in listings["DSDT"]
    assert listings["XSDT"].count("ACPI Table Address") == 2


def test_fadt_and_dsdt_drive_the_pm_device_to_power_off(memory: GuestMemory) -> None:
    """What ACPICA does for S5: take SLP_TYP from \\_S5, write it with SLP_EN to PM1a_CNT."""
    config = pc_config()
    found = walk(memory, build_acpi(memory, config))
    dsdt = found["DSDT"][1]
    s5 = dsdt.index(b"\\_S5_")
    package = dsdt[s5 + 5:]
    assert package[0] == 0x12 and package[2] == 4  # PackageOp, 4 elements
    slp_typ = package[4] if package[3] == 0x0A else package[3]  # BytePrefix value, or Zero/One
    pm1a_cnt = struct.unpack_from("<I", found["FACP"][1], 64)[0]
    lifecycle = Lifecycle()
    bus = Bus("pio")
    attach_acpi_pm(bus, AcpiPm(lifecycle, RecordingIrqLine(), lambda: 0), config.ports)
    bus.write(pm1a_cnt, 2, (slp_typ << 10) | (1 << 13))
    assert lifecycle.pending == Shutdown(0, "ACPI power-off")


def test_ports_in_config_reach_the_fadt(memory: GuestMemory) -> None:
    config = AcpiConfig(ports=PmPorts(pm_base=0xB000, gpe0_base=0xB100, reset=0xCF9), i8042=False, cmos_rtc=False)
    fadt = walk(memory, build_acpi(memory, config))["FACP"][1]
    assert struct.unpack_from("<IIII", fadt, 64) == (0xB004, 0, 0, 0xB008)
    boot_arch = struct.unpack_from("<H", fadt, 109)[0]
    assert not boot_arch & 0b10 and boot_arch & (1 << 5)
    assert fadt[108] == 0  # no RTC century register


def test_madt_and_dsdt_follow_the_vcpu_count(memory: GuestMemory) -> None:
    found = walk(memory, build_acpi(memory, pc_config(vcpus=8)))
    madt = found["APIC"][1]
    assert madt[44:44 + 8 * 8:8] == bytes([0] * 8)  # eight Local APIC entries first
    assert [madt[44 + 8 * i + 3] for i in range(8)] == list(range(8))
    assert found["DSDT"][1].count(b"ACPI0007") == 8


def test_boot_params_get_the_rsdp_for_protocol_2_14(memory: GuestMemory) -> None:
    params = BootParams()
    params.hdr.header = 0x53726448
    params.hdr.version = 0x020F
    memory.write_obj(0x7000, params)
    assert set_boot_params_rsdp(memory, 0xE0000, 0x7000)
    assert memory.read_u64(0x7000 + 0x70) == 0xE0000


@pytest.mark.parametrize("magic,version", [(0x53726448, 0x020D), (0, 0x020F)])
def test_boot_params_left_alone_without_a_new_enough_linux_header(memory: GuestMemory, magic: int,
                                                                  version: int) -> None:
    params = BootParams()
    params.hdr.header = magic
    params.hdr.version = version
    memory.write_obj(0x7000, params)
    assert not set_boot_params_rsdp(memory, 0xE0000, 0x7000)
    assert memory.read_u64(0x7000 + 0x70) == 0


def test_e820_reserves_the_table_area(memory: GuestMemory) -> None:
    entries = memory_map(memory, ACPI_RESERVED_RANGES)
    start, end = TABLE_AREA
    assert any(e.type == E820_RESERVED and e.addr <= start and end <= e.end for e in entries)
    assert not any(e.type == E820_RAM and e.addr < end and start < e.end for e in entries)


def test_too_little_ram_is_refused() -> None:
    small = GuestMemory(512 * 1024)
    try:
        with pytest.raises(AcpiError, match=r"does not cover the table area \[0xe0000, 0xf0000\)"):
            build_acpi(small, AcpiConfig())
    finally:
        small.close()


def test_too_many_dsdt_devices_are_refused(memory: GuestMemory) -> None:
    devices = [virtio_mmio(i, 0xD000_0000 + 0x200 * i, 0x200, 5) for i in range(256)] * 4
    with pytest.raises(AcpiError, match=r"the DSDT of \d+ bytes would end at 0x"):
        build_acpi(memory, AcpiConfig(dsdt_devices=devices))


@pytest.mark.parametrize("vcpus,message", [(0, "at least one vCPU"), (300, "300 vCPUs requested")])
def test_bad_vcpu_counts_are_refused(memory: GuestMemory, vcpus: int, message: str) -> None:
    with pytest.raises(AcpiError, match=message):
        build_acpi(memory, AcpiConfig(vcpus=vcpus))

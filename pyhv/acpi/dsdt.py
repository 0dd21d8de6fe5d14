"""The DSDT: the \\_S5 sleep package, one processor device per vCPU, and whatever devices the
machine lists, inside ``\\_SB``.

A device is one encoded AML ``Device()`` term, so adding hardware to the DSDT is appending
bytes to a list: the helpers below build the PC's legacy devices (as QEMU's pc machine
declares them) and virtio-mmio transports (as QEMU's microvm and Firecracker do).
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

from ..devices.acpi_pm import SLP_TYP_S5
from . import aml
from .errors import AcpiError
from .resources import (dword_memory, interrupt, io, irq_no_flags, memory32_fixed, qword_memory, resource_template,
                        word_bus_number, word_io)
from .tables import DSDT_REVISION, table_bytes

PROCESSOR_HID = "ACPI0007"
VIRTIO_MMIO_HID = "LNRO0005"  # Linux's virtio_mmio driver matches this ACPI id
PVPANIC_HID = "QEMU0001"  # Linux's pvpanic-mmio driver matches this ACPI id
MAX_VIRTIO_MMIO_DEVICES = 256  # device names VR00..VRFF

# (I/O base, ISA IRQ) of the PC's serial ports, COM1 to COM4.
PCI_CONFIG_PORT, PCI_CONFIG_PORTS_LEN = 0xCF8, 8
PCI_HOLE_START, PCI_HOLE_END = 0xC000_0000, 0xFEC0_0000  # below the IOAPIC, as on QEMU's pc machine

PC_SERIAL_PORTS: Tuple[Tuple[int, int], ...] = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))
SERIAL_PORT_LEN = 8


def build_dsdt(vcpus: int, devices: Sequence[bytes]) -> bytes:
    """The DSDT: ``\\_SB`` with a processor device per vCPU and then ``devices``, and ``\\_S5``."""
    system_bus = [processor_device(uid) for uid in range(vcpus)] + list(devices)
    # \_S5: SLP_TYP for PM1a_CNT, SLP_TYP for PM1b_CNT (absent here), then two reserved values.
    s5 = aml.package([aml.integer(SLP_TYP_S5), aml.integer(SLP_TYP_S5), aml.integer(0), aml.integer(0)])
    body = aml.scope("\\_SB", system_bus) + aml.name("\\_S5", s5)
    return table_bytes(b"DSDT", DSDT_REVISION, body)


def processor_device(uid: int) -> bytes:
    """Device(Cxxx) with _HID ACPI0007 and the _UID the MADT's Local APIC entry carries."""
    if not 0 <= uid <= 0xFFF:
        raise AcpiError(f"DSDT: processor UID {uid} does not fit a device name (0-4095)")
    return aml.device(f"C{uid:03X}", [
        aml.name("_HID", aml.string(PROCESSOR_HID)),
        aml.name("_UID", aml.integer(uid)),
    ])


def serial_port(index: int, base: int, irq: int) -> bytes:
    """COM<index+1>: a 16550 UART (PNP0501) at ``base`` on ISA ``irq``."""
    return aml.device(f"COM{index + 1}", [
        aml.name("_HID", aml.eisaid("PNP0501")),
        aml.name("_UID", aml.integer(index + 1)),
        aml.name("_CRS", resource_template([io(base, base, 0, SERIAL_PORT_LEN), irq_no_flags([irq])])),
    ])


def rtc(base: int = 0x70, irq: int = 8) -> bytes:
    """The CMOS real-time clock (PNP0B00) at ports base, base+1."""
    return aml.device("RTC", [
        aml.name("_HID", aml.eisaid("PNP0B00")),
        aml.name("_CRS", resource_template([io(base, base, 1, 2), irq_no_flags([irq])])),
    ])


def ps2_keyboard(data_port: int = 0x60, command_port: int = 0x64, irq: int = 1) -> bytes:
    """The i8042's keyboard port (PNP0303); Linux's i8042 driver finds the controller through it."""
    return aml.device("KBD", [
        aml.name("_HID", aml.eisaid("PNP0303")),
        aml.name("_CRS", resource_template([io(data_port, data_port, 1, 1), io(command_port, command_port, 1, 1),
                                            irq_no_flags([irq])])),
    ])


def ps2_mouse(irq: int = 12) -> bytes:
    """The i8042's auxiliary (mouse) port (PNP0F13)."""
    return aml.device("MOU", [
        aml.name("_HID", aml.eisaid("PNP0F13")),
        aml.name("_CRS", resource_template([irq_no_flags([irq])])),
    ])


def virtio_mmio(index: int, base: int, size: int, gsi: int, edge: bool = False) -> bytes:
    """A virtio-mmio transport (LNRO0005) at [base, base+size) interrupting on ``gsi``.

    Level-triggered, active high by default, as QEMU's microvm declares them.
    """
    if not 0 <= index < MAX_VIRTIO_MMIO_DEVICES:
        raise AcpiError(f"DSDT: virtio-mmio index {index} is outside 0..{MAX_VIRTIO_MMIO_DEVICES - 1}")
    return aml.device(f"VR{index:02X}", [
        aml.name("_HID", aml.string(VIRTIO_MMIO_HID)),
        aml.name("_UID", aml.integer(index)),
        aml.name("_CCA", aml.integer(1)),  # cache-coherent DMA
        aml.name("_CRS", resource_template([memory32_fixed(base, size), interrupt([gsi], edge=edge)])),
    ])


def pvpanic(port: int) -> bytes:
    """QEMU's pvpanic event port (QEMU0001): one byte of I/O space at ``port``."""
    return aml.device("PEVT", [
        aml.name("_HID", aml.string(PVPANIC_HID)),
        aml.name("_CRS", resource_template([io(port, port, 1, 1)])),
    ])


def pci_host_bridge(mmio_start: int = PCI_HOLE_START, mmio_end: int = PCI_HOLE_END,
                    high_mmio: Tuple[int, int] = (0, 0)) -> bytes:
    """PCI0: a PCI host bridge (PNP0A03) on segment 0 decoding buses 0-255, the configuration
    ports 0xCF8-0xCFF, every other I/O port, and the 32-bit MMIO window [mmio_start, mmio_end)
    (plus [start, end) of ``high_mmio`` above 4 GiB when given)."""
    windows = [
        word_bus_number(0, 0xFF),
        io(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORTS_LEN),
        word_io(0x0000, PCI_CONFIG_PORT - 1),
        word_io(PCI_CONFIG_PORT + PCI_CONFIG_PORTS_LEN, 0xFFFF),
        dword_memory(mmio_start, mmio_end - 1),
    ]
    if high_mmio[1] > high_mmio[0]:
        windows.append(qword_memory(high_mmio[0], high_mmio[1] - 1))
    return aml.device("PCI0", [
        aml.name("_HID", aml.eisaid("PNP0A03")),
        aml.name("_ADR", aml.integer(0)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_SEG", aml.integer(0)),
        aml.name("_BBN", aml.integer(0)),
        aml.name("_CRS", resource_template(windows)),
    ])


def pc_legacy_devices(serial_ports: Iterable[Tuple[int, int]] = PC_SERIAL_PORTS[:1], i8042: bool = True,
                      cmos_rtc: bool = True) -> List[bytes]:
    """The ISA devices of pyhv's PC machine: ``serial_ports`` as (base, irq) pairs in COM order,
    the i8042 keyboard and mouse ports, and the RTC."""
    devices = [serial_port(index, base, irq) for index, (base, irq) in enumerate(serial_ports)]
    if i8042:
        devices += [ps2_keyboard(), ps2_mouse()]
    if cmos_rtc:
        devices.append(rtc())
    return devices

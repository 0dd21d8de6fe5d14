"""The PCI host bridge: the i440FX function at 00.0 and the guest's two ways into config space.

Configuration mechanism #1 (PCI 3.0, 3.2.2.3.2): a dword written to CONFIG_ADDRESS (0xCF8)
selects bus, device, function and register (bit 31 enables); CONFIG_DATA (0xCFC-0xCFF) then
reads or writes that register, a byte, word or dword at a time. Only dword accesses reach
CONFIG_ADDRESS; byte accesses at 0xCF9 belong to the reset control register, so the
address port claims the single port 0xCF8 and the bus hands 0xCF9 to whoever owns it.

ECAM (PCIe 4.0, 7.2.2): a memory window where bus << 20 | device << 15 | function << 12 |
register addresses config space directly; the ACPI MCFG table publishes it.
"""

from __future__ import annotations

from ...bus import Bus
from .config import PciFunction
from .root import PciRoot

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_DATA_PORT = 0xCFC
CONFIG_DATA_SIZE = 4

CONFIG_ADDRESS_ENABLE = 1 << 31

# pyhv's ECAM window: bus 0 only, in the MMIO hole below the BAR window (allocator.py).
ECAM_BASE = 0xE000_0000
ECAM_BUS_SIZE = 1 << 20
ECAM_SIZE = ECAM_BUS_SIZE  # one bus

I440FX_VENDOR_ID = 0x8086
I440FX_DEVICE_ID = 0x1237
I440FX_REVISION = 0x02
CLASS_HOST_BRIDGE = 0x06_00_00
QEMU_SUBSYSTEM_VENDOR_ID = 0x1AF4
QEMU_SUBSYSTEM_ID = 0x1100


class I440fxHostBridge(PciFunction):
    """The host bridge function at 00.0, as QEMU's ``-M pc`` shows it (no BARs)."""

    def __init__(self) -> None:
        super().__init__(I440FX_VENDOR_ID, I440FX_DEVICE_ID, CLASS_HOST_BRIDGE, I440FX_REVISION,
                         QEMU_SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_ID)


class ConfigAddressPort:
    """CONFIG_ADDRESS at 0xCF8: a dword register; narrower accesses are not for it."""

    def __init__(self) -> None:
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.value
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            # Bits 1:0 are read-only zero; bits 30:24 are reserved (AMD's extended register
            # number lives there, which pyhv does not offer).
            self.value = value & 0x80FF_FFFC


class ConfigDataPort:
    """CONFIG_DATA at 0xCFC-0xCFF: the register CONFIG_ADDRESS selects, plus the byte offset."""

    def __init__(self, address: ConfigAddressPort, root: PciRoot) -> None:
        self.address = address
        self.root = root

    def _target(self, offset: int):
        value = self.address.value
        if not value & CONFIG_ADDRESS_ENABLE:
            return None
        return (value >> 16) & 0xFF, (value >> 8) & 0xFF, (value & 0xFC) + offset

    def read(self, offset: int, size: int) -> int:
        target = self._target(offset)
        if target is None or offset + size > CONFIG_DATA_SIZE:
            return (1 << (8 * size)) - 1
        bus, devfn, register = target
        return self.root.config_read(bus, devfn, register, size)

    def write(self, offset: int, size: int, value: int) -> None:
        target = self._target(offset)
        if target is None or offset + size > CONFIG_DATA_SIZE:
            return
        bus, devfn, register = target
        self.root.config_write(bus, devfn, register, size, value)


class EcamWindow:
    """The memory-mapped configuration window of ``bus_count`` buses starting at bus 0."""

    def __init__(self, root: PciRoot, bus_count: int = 1) -> None:
        self.root = root
        self.size = bus_count * ECAM_BUS_SIZE

    @staticmethod
    def _decode(offset: int):
        return offset >> 20, (offset >> 12) & 0xFF, offset & 0xFFF

    def read(self, offset: int, size: int) -> int:
        bus, devfn, register = self._decode(offset)
        if register + size > 0x1000:
            return (1 << (8 * size)) - 1
        return self.root.config_read(bus, devfn, register, size)

    def write(self, offset: int, size: int, value: int) -> None:
        bus, devfn, register = self._decode(offset)
        if register + size <= 0x1000:
            self.root.config_write(bus, devfn, register, size, value)


class PciHost:
    """Bus 0 with the host bridge, reachable through 0xCF8/0xCFC and, if asked, ECAM."""

    def __init__(self, pio: Bus, mmio: Bus, root: PciRoot, ecam_base: int = ECAM_BASE,
                 with_ecam: bool = True) -> None:
        self.root = root
        self.bridge = I440fxHostBridge()
        root.plug(self.bridge, 0)
        self.address_port = ConfigAddressPort()
        self.data_port = ConfigDataPort(self.address_port, root)
        pio.attach(CONFIG_ADDRESS_PORT, 1, self.address_port)
        pio.attach(CONFIG_DATA_PORT, CONFIG_DATA_SIZE, self.data_port)
        self.ecam = None
        self.ecam_base = ecam_base
        if with_ecam:
            self.ecam = EcamWindow(root)
            mmio.attach(ecam_base, self.ecam.size, self.ecam)

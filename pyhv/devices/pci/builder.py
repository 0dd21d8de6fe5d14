"""Building the PCI side of a machine from QEMU options: the host bridge, ``-netdev`` and
``-device virtio-{blk,net,rng}-pci`` (each with ``packed=on|off``, default off: offer packed
virtqueues).

Call order for the machine builder: ``PciBuilder(...)`` once (it attaches the host bridge,
0xCF8/0xCFC and the ECAM window), :meth:`PciBuilder.add_netdev` for each ``-netdev``, then
:meth:`PciBuilder.add_device` for each PCI ``-device``, then :meth:`PciBuilder.start` before
the vCPU runs (back-end threads), and :meth:`PciBuilder.close` at the end.

Devices take the next free slot from 1 (``addr=N`` picks one), their BARs are placed by
:class:`BarAllocator`, INTA# goes to GSI ``intx_gsi(slot, 1)`` (a shared level line), and
MSI-X messages go to ``msi_sink``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, NamedTuple, Optional

from ...block.backend import BlockBackend
from ...bus import Bus
from ...config import parse_int
from ...errors import ConfigError
from ...irq import IrqLine
from ...memory import GuestMemory
from ...net.backend import NetBackend, open_netdev, parse_netdev
from ..virtio.blk import VirtioBlock
from ..virtio.device import VirtioDevice
from ..virtio.drives import DriveOpener, DriveSpec, pop_on_off
from ..virtio.net import DEFAULT_MAC, VirtioNet, parse_mac
from ..virtio.pci import VirtioPciFunction
from ..virtio.rng import VirtioRng
from .allocator import BarAllocator
from .host import ECAM_BASE, PciHost
from .config import PciError
from .msix import MsiSink
from .root import DEFAULT_INTX_GSIS, PciRoot, SharedLevelLine, intx_gsi


class PciSlot(NamedTuple):
    """One plugged device: what the ACPI tables and the monitor may want to describe."""

    slot: int
    gsi: int  # where its INTA# goes
    driver: str
    function: VirtioPciFunction


class PciBuilder:
    """Bus 0 with the host bridge; virtio devices plugged as QEMU's ``-device`` names them."""

    def __init__(self, pio: Bus, mmio: Bus, memory: GuestMemory, irq_line: Callable[[int], IrqLine],
                 msi_sink: MsiSink, drives: Optional[Mapping[str, DriveSpec]] = None,
                 intx_gsis=DEFAULT_INTX_GSIS, ecam_base: Optional[int] = ECAM_BASE,
                 open_drive: Callable[[DriveSpec], BlockBackend] = DriveOpener().open) -> None:
        self.memory = memory
        self.open_drive = open_drive
        self.msi_sink = msi_sink
        self.irq_line = irq_line
        self.drives = drives if drives is not None else {}
        self.intx_gsis = tuple(intx_gsis)
        self.root = PciRoot(pio, mmio, memory)
        self.host = PciHost(pio, mmio, self.root, ecam_base or 0, with_ecam=ecam_base is not None)
        self.allocator = BarAllocator()
        self.slots: List[PciSlot] = []
        self.netdevs: Dict[str, NetBackend] = {}
        self._netdev_users: Dict[str, str] = {}
        self._used_drives: Dict[str, str] = {}
        self._lines: Dict[int, SharedLevelLine] = {}
        self._nic_count = 0

    # --- options ------------------------------------------------------------------------------
    def add_netdev(self, text: str) -> NetBackend:
        """One ``-netdev TYPE,id=ID,...``: opens the back-end (its thread starts in start())."""
        spec = parse_netdev(text)
        if spec.id in self.netdevs:
            raise ConfigError(f"-netdev {text}: id '{spec.id}' is already used")
        backend = open_netdev(spec)
        self.netdevs[spec.id] = backend
        return backend

    def add_device(self, driver: str, props: Dict[str, str]) -> PciSlot:
        factory = DEVICE_FACTORIES.get(driver)
        if factory is None:
            raise ConfigError(f"-device {driver}: not a PCI device pyhv provides ({', '.join(sorted(DEVICE_FACTORIES))})")
        props = dict(props)
        slot = _slot_property(driver, props)
        device = factory(self, driver, props)
        if props:
            device.close()
            raise ConfigError(f"-device {driver}: unsupported property '{next(iter(props))}'")
        try:
            return self.add_virtio(device, driver, slot)
        except PciError as err:
            device.close()
            raise ConfigError(f"-device {driver}: {err}") from err

    def add_virtio(self, device: VirtioDevice, driver: str, slot: Optional[int] = None) -> PciSlot:
        """Plug ``device`` behind the virtio-pci transport; its slot."""
        function = VirtioPciFunction(device, self.msi_sink)
        # BARs first: plugging decodes them, and a failure leaves nothing half-plugged.
        self.allocator.assign(function)
        taken = self.root.plug(function, slot)
        gsi = intx_gsi(taken, 1, self.intx_gsis)
        line = self._lines.get(gsi)
        if line is None:
            line = self._lines[gsi] = SharedLevelLine(self.irq_line(gsi))
        function.use_intx(line.source(taken), gsi)
        placed = PciSlot(taken, gsi, driver, function)
        self.slots.append(placed)
        return placed

    def attach_drive(self, drive: DriveSpec, serial: str = "", driver: str = "virtio-blk-pci",
                     packed: bool = False) -> VirtioBlock:
        """A virtio-blk device for ``drive`` (also for ``-drive if=virtio`` on a PCI machine)."""
        if drive.id in self._used_drives:
            raise ConfigError(f"-device {driver}: drive '{drive.id}' is already used by {self._used_drives[drive.id]}")
        backend = self.open_drive(drive)
        self._used_drives[drive.id] = driver
        return VirtioBlock(self.memory, backend, serial, drive.discard, packed=packed)

    # --- running ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the network back-ends' reader threads (before the vCPU runs)."""
        for placed in self.slots:
            if isinstance(placed.function.device, VirtioNet):
                placed.function.device.start_backend()

    def close(self) -> None:
        for placed in self.slots:
            placed.function.device.close()
        for backend in self.netdevs.values():
            backend.close()


def _slot_property(driver: str, props: Dict[str, str]) -> Optional[int]:
    text = props.pop("addr", "")
    if not text:
        return None
    slot_text, _, function_text = text.partition(".")
    slot = parse_int(slot_text, f"-device {driver},addr")
    if function_text and parse_int(function_text, f"-device {driver},addr") != 0:
        raise ConfigError(f"-device {driver},addr={text}: only function 0 is supported")
    if slot == 0:
        raise ConfigError(f"-device {driver},addr={text}: slot 0 is the host bridge")
    return slot


def _blk(builder: PciBuilder, driver: str, props: Dict[str, str]) -> VirtioDevice:
    drive_id = props.pop("drive", "")
    serial = props.pop("serial", "")
    packed = pop_on_off(f"-device {driver}", props, "packed")
    if not drive_id:
        raise ConfigError(f"-device {driver}: drive=ID is missing")
    drive = builder.drives.get(drive_id)
    if drive is None:
        raise ConfigError(f"-device {driver}: no -drive or -blockdev with id '{drive_id}'")
    if len(serial.encode()) > 20:
        raise ConfigError(f"-device {driver}: serial '{serial}' is longer than 20 bytes")
    return builder.attach_drive(drive, serial, driver, packed)


def _net(builder: PciBuilder, driver: str, props: Dict[str, str]) -> VirtioDevice:
    packed = pop_on_off(f"-device {driver}", props, "packed")
    netdev = props.pop("netdev", "")
    if not netdev:
        raise ConfigError(f"-device {driver}: netdev=ID is missing")
    backend = builder.netdevs.get(netdev)
    if backend is None:
        raise ConfigError(f"-device {driver}: no -netdev with id '{netdev}'")
    if netdev in builder._netdev_users:
        raise ConfigError(f"-device {driver}: netdev '{netdev}' is already used by {builder._netdev_users[netdev]}")
    mac_text = props.pop("mac", "")
    if mac_text:
        mac = parse_mac(mac_text)
    else:
        # QEMU numbers its default addresses 52:54:00:12:34:56, :57, ... per NIC.
        mac = DEFAULT_MAC[:5] + bytes([(DEFAULT_MAC[5] + builder._nic_count) & 0xFF])
    builder._nic_count += 1
    builder._netdev_users[netdev] = driver
    return VirtioNet(builder.memory, backend, mac, packed)


def _rng(builder: PciBuilder, driver: str, props: Dict[str, str]) -> VirtioDevice:
    return VirtioRng(builder.memory, pop_on_off(f"-device {driver}", props, "packed"))


DEVICE_FACTORIES: Dict[str, Callable[[PciBuilder, str, Dict[str, str]], VirtioDevice]] = {
    "virtio-blk-pci": _blk,
    "virtio-net-pci": _net,
    "virtio-rng-pci": _rng,
}

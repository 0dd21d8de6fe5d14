"""Building virtio-mmio devices from QEMU options and placing them on the machine.

Layout (chosen for pyhv, documented for the ACPI tables): device ``n`` gets the
:data:`WINDOW_SIZE`-byte window at ``MMIO_BASE + n * WINDOW_SIZE`` in the MMIO hole
(0xD0000000 up, clear of the IOAPIC at 0xFEC00000 and the LAPIC at 0xFEE00000) and the
interrupt GSI ``GSIS[n]``: IOAPIC pins 16-23, which no ISA device uses, as QEMU's microvm
does. The line is level-triggered, active high. The Debian kernel finds the devices through
DSDT entries (_HID "LNRO0005", a Memory32Fixed and an Interrupt resource per
:class:`MmioSlot`); :meth:`VirtioMmioBuilder.kernel_cmdline` gives the same list for kernels
built with ``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES``.

QEMU driver names: ``virtio-blk-device`` (``drive=ID``, ``serial=S``), ``virtio-rng-device``,
``virtio-serial-device`` followed by ``virtconsole,chardev=ID`` (one console port). Each of
the three devices takes ``packed=on|off`` (default off): offer packed virtqueues.
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional

from ...block.backend import BlockBackend
from ...bus import Bus
from ...chardev import CharBackend, NullBackend
from ...errors import ConfigError
from ...irq import IrqLine
from ...memory import GuestMemory
from .blk import VirtioBlock
from .console import VirtioConsole
from .device import VirtioDevice
from .drives import DriveOpener, DriveSpec, parse_blockdev, parse_drive, pop_on_off
from .mmio import MMIO_WINDOW_SIZE, VirtioMmioTransport
from .rng import VirtioRng

MMIO_BASE = 0xD000_0000
WINDOW_SIZE = MMIO_WINDOW_SIZE
GSIS = tuple(range(16, 24))


class MmioSlot(NamedTuple):
    """Where one virtio-mmio device sits: what the ACPI DSDT entry must describe."""

    base: int
    size: int
    gsi: int
    driver: str  # the QEMU driver name it was created as
    transport: VirtioMmioTransport


def attach_virtio_mmio(mmio: Bus, device: VirtioDevice, irq: IrqLine, base: int) -> VirtioMmioTransport:
    """Put ``device`` behind an MMIO transport window at ``base``, interrupting on ``irq``."""
    transport = VirtioMmioTransport(device, irq)
    mmio.attach(base, WINDOW_SIZE, transport)
    return transport


class VirtioMmioBuilder:
    """Turns ``-drive``/``-blockdev``/``-device`` options into attached virtio-mmio devices.

    Call :meth:`add_drive` and :meth:`add_blockdev` for every such option first (in command
    line order; an ``if=virtio`` drive gets its device at once, like QEMU), then
    :meth:`add_device` for each virtio ``-device``. ``chardevs`` maps ``-chardev`` ids to
    opened back-ends for ``virtconsole,chardev=ID``.
    """

    def __init__(self, mmio: Bus, memory: GuestMemory, irq_line: Callable[[int], IrqLine],
                 chardevs: Optional[Dict[str, CharBackend]] = None,
                 open_drive: Callable[[DriveSpec], BlockBackend] = DriveOpener().open,
                 snapshot: bool = False) -> None:
        """``open_drive`` opens a drive's image; ``snapshot`` is QEMU's ``-snapshot``."""
        self.mmio = mmio
        self.open_drive = open_drive
        self.snapshot = snapshot
        self.memory = memory
        self.irq_line = irq_line
        self.chardevs = dict(chardevs or {})
        self.slots: List[MmioSlot] = []
        self.drives: Dict[str, DriveSpec] = {}
        self._drive_count = 0
        self._used_drives: Dict[str, str] = {}  # drive id -> the device that took it
        self._open_console: Optional[VirtioConsole] = None

    # --- options ----------------------------------------------------------------------------
    def add_drive(self, text: str) -> Optional[MmioSlot]:
        """One ``-drive``; the slot of the device it created (``if=virtio``), else None."""
        drive = parse_drive(text, self._drive_count, self.snapshot)
        self._drive_count += 1
        self._remember(drive, f"-drive {text}")
        if drive.interface == "virtio":
            return self._attach_blk(drive, "", "virtio-blk-device")
        return None

    def add_blockdev(self, text: str) -> None:
        drive = parse_blockdev(text, self.drives)
        self._remember(drive, f"-blockdev {text}")

    def _remember(self, drive: DriveSpec, option: str) -> None:
        if drive.id in self.drives:
            raise ConfigError(f"{option}: id '{drive.id}' is already used by another drive")
        self.drives[drive.id] = drive

    def add_device(self, driver: str, props: Dict[str, str]) -> Optional[MmioSlot]:
        """One virtio ``-device DRIVER,props``; the slot it took (None for virtconsole, a port)."""
        factory = DEVICE_FACTORIES.get(driver)
        if factory is None:
            raise ConfigError(f"-device {driver}: not a virtio-mmio device pyhv provides "
                              f"({', '.join(sorted(DEVICE_FACTORIES))})")
        return factory(self, dict(props))

    # --- placement ----------------------------------------------------------------------------
    def attach(self, device: VirtioDevice, driver: str) -> MmioSlot:
        index = len(self.slots)
        if index >= len(GSIS):
            raise ConfigError(f"-device {driver}: at most {len(GSIS)} virtio-mmio devices are supported")
        base = MMIO_BASE + index * WINDOW_SIZE
        gsi = GSIS[index]
        transport = attach_virtio_mmio(self.mmio, device, self.irq_line(gsi), base)
        slot = MmioSlot(base, WINDOW_SIZE, gsi, driver, transport)
        self.slots.append(slot)
        return slot

    def kernel_cmdline(self) -> str:
        """``virtio_mmio.device=`` arguments describing every slot."""
        return " ".join(f"virtio_mmio.device={s.size:#x}@{s.base:#x}:{s.gsi}" for s in self.slots)

    def close(self) -> None:
        for slot in self.slots:
            slot.transport.device.close()

    # --- devices ------------------------------------------------------------------------------
    def _attach_blk(self, drive: DriveSpec, serial: str, driver: str, packed: bool = False) -> MmioSlot:
        if drive.id in self._used_drives:
            raise ConfigError(f"-device {driver}: drive '{drive.id}' is already used by "
                              f"{self._used_drives[drive.id]}")
        backend = self.open_drive(drive)
        self._used_drives[drive.id] = driver
        return self.attach(VirtioBlock(self.memory, backend, serial, drive.discard, packed=packed), driver)


def _refuse_unknown(driver: str, props: Dict[str, str]) -> None:
    if props:
        raise ConfigError(f"-device {driver}: unsupported property '{next(iter(props))}'")


def _blk_device(builder: VirtioMmioBuilder, props: Dict[str, str]) -> MmioSlot:
    drive_id = props.pop("drive", "")
    serial = props.pop("serial", "")
    packed = pop_on_off("-device virtio-blk-device", props, "packed")
    _refuse_unknown("virtio-blk-device", props)
    if not drive_id:
        raise ConfigError("-device virtio-blk-device: drive=ID is missing")
    drive = builder.drives.get(drive_id)
    if drive is None:
        raise ConfigError(f"-device virtio-blk-device: no -drive or -blockdev with id '{drive_id}'")
    if len(serial.encode()) > 20:
        raise ConfigError(f"-device virtio-blk-device: serial '{serial}' is longer than 20 bytes")
    return builder._attach_blk(drive, serial, "virtio-blk-device", packed)


def _rng_device(builder: VirtioMmioBuilder, props: Dict[str, str]) -> MmioSlot:
    packed = pop_on_off("-device virtio-rng-device", props, "packed")
    _refuse_unknown("virtio-rng-device", props)
    return builder.attach(VirtioRng(builder.memory, packed), "virtio-rng-device")


def _serial_device(builder: VirtioMmioBuilder, props: Dict[str, str]) -> MmioSlot:
    packed = pop_on_off("-device virtio-serial-device", props, "packed")
    _refuse_unknown("virtio-serial-device", props)
    # Output goes nowhere until a virtconsole port names its back-end, as in QEMU.
    console = VirtioConsole(builder.memory, NullBackend(), packed)
    builder._open_console = console
    return builder.attach(console, "virtio-serial-device")


def _virtconsole(builder: VirtioMmioBuilder, props: Dict[str, str]) -> None:
    chardev = props.pop("chardev", "")
    _refuse_unknown("virtconsole", props)
    console = builder._open_console
    if console is None:
        raise ConfigError("-device virtconsole: needs a virtio-serial-device before it")
    if not chardev or chardev not in builder.chardevs:
        raise ConfigError(f"-device virtconsole: chardev '{chardev}' names no -chardev")
    builder._open_console = None  # one port per device: no MULTIPORT
    backend = builder.chardevs[chardev]
    with console.lock:
        console.backend = backend
    backend.start(console.receive)
    return None


DEVICE_FACTORIES: Dict[str, Callable[[VirtioMmioBuilder, Dict[str, str]], Optional[MmioSlot]]] = {
    "virtio-blk-device": _blk_device,
    "virtio-rng-device": _rng_device,
    "virtio-serial-device": _serial_device,
    "virtconsole": _virtconsole,
}

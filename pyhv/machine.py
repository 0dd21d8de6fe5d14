"""Builds a VM from a MachineConfig: a straight list of attach steps, then run.

The machine owns guest memory, the PIO and MMIO buses and the devices; the accelerator
gets them through :class:`pyhv.accel.base.Platform`. Devices never learn which
accelerator runs them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from . import cpu_model
from .accel.base import Accelerator, Platform
from .boot.bzimage import is_bzimage
from .bus import Bus
from .cache import default_cache_dir
from .chardev import CharBackend, open_chardev
from .config import DeviceSpec, MachineConfig, parse_int
from .errors import AccelError, ConfigError
from .lifecycle import Lifecycle, StopRequest
from .memory import GuestMemory
from .runtime_env import ON_PYPY

# (I/O base, ISA IRQ) of COM1..COM4, as on every PC.
SERIAL_PORTS = [(0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3)]
I8042_DATA, I8042_COMMAND = 0x60, 0x64
RTC_BASE, RTC_IRQ = 0x70, 8
POST_CODE_PORT = 0x80
SCI_IRQ = 9  # the ACPI system control interrupt, as on PIIX4 and in the MADT's override


def create_accelerator(names, platform: Platform, notice: Callable[[str], None],
                       boots_linux: bool = False) -> Accelerator:
    """The first accelerator of ``names`` that works here (QEMU's ``-accel kvm:tcg``).

    With a choice left and a Linux kernel to boot, KVM must also be able to run Linux
    (see :mod:`.accel.kvm_probe`). A lone ``-accel kvm`` is taken as asked, with a warning
    where that KVM cannot run Linux: on such a host the kernel would otherwise crawl for
    minutes with nothing on the console (``quiet``) before it stops.
    """
    failures: List[str] = []
    for position, name in enumerate(names):
        if name == "kvm" and boots_linux:
            from .accel.kvm_probe import linux_blocker

            blocker = linux_blocker(_kvm_device())
            if blocker is not None:
                if position < len(names) - 1:
                    failures.append(f"{name}: {blocker}")
                    continue
                notice(f"pyhv: warning: {blocker}; the Linux kernel will not boot here "
                       "(-accel tcg, or kvm:tcg, runs it on the software CPU)")
        try:
            accel = _ACCELERATORS[name](platform)
        except AccelError as err:
            failures.append(f"{name}: {err}")
            continue
        if failures:
            slow = _slow_linux_notice() if name == "tcg" and boots_linux else ""
            notice(f"pyhv: {'; '.join(failures)}; using {name}{slow}")
        return accel
    raise AccelError("no usable accelerator (" + "; ".join(failures) + ")")


def _slow_linux_notice() -> str:
    """Said when -accel kvm:tcg settles on the software CPU for Linux: the default guest's
    console stays quiet until /init, so without it a first boot looks hung (bench/boot.py:
    20 to 25 times QEMU's TCG on PyPy, 60 to 70 times on CPython)."""
    if ON_PYPY:
        return " (Linux boots there in about a minute)"
    return (" (Linux boots there in a few minutes on CPython; on PyPy, as .venv-pypy/bin/pyhv "
            "runs it, in a third of that)")


def _kvm(platform: Platform) -> Accelerator:
    from .accel.kvm import KvmAccelerator

    return KvmAccelerator(platform, _kvm_device())


def _kvm_device() -> str:
    # PYHV_KVM_DEVICE points at another KVM node (a test uses it to play a host without KVM).
    return os.environ.get("PYHV_KVM_DEVICE", "/dev/kvm")


def _tcg(platform: Platform) -> Accelerator:
    from .accel.tcg.accel import TcgAccelerator

    return TcgAccelerator(platform)


_ACCELERATORS: Dict[str, Callable[[Platform], Accelerator]] = {"kvm": _kvm, "tcg": _tcg}


def tcg_hints_path(kernel: Optional[Path]) -> Optional[Path]:
    """Where the software CPU keeps its hot-block hints for guests booted from ``kernel``
    (pyhv.accel.tcg.hints), and beside them its translated code (pyhv.accel.tcg.codecache):
    one file per kernel path in the cache directory. PYHV_TCG_HINTS names another directory,
    or is "off" for none (every boot then warms up and compiles from scratch)."""
    setting = os.environ.get("PYHV_TCG_HINTS", "")
    if not kernel or setting == "off":
        return None
    from .accel.tcg.hints import hints_file_name  # (the software CPU is imported when used)

    directory = Path(setting) if setting else default_cache_dir() / "tcg-hints"
    return directory / hints_file_name(kernel)


def _is_linux_kernel(kernel) -> bool:
    """Whether ``kernel`` is a bzImage; unreadable files are left to the loader's errors."""
    if not kernel:
        return False
    try:
        with open(kernel, "rb") as stream:
            return is_bzimage(stream.read(0x206))
    except OSError:
        return False


class Machine:
    """One VM: memory, buses, devices, boot state and an accelerator."""

    def __init__(self, config: MachineConfig, notice: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                 kept_chardevs: Optional[Dict[str, CharBackend]] = None,
                 kept_overlays: Optional[Dict[str, str]] = None):
        """``kept_chardevs``: file and unix-socket back-ends by spec, owned by the caller, which
        passes the same dict to the machine it builds after a reset so that, as in QEMU, a
        reset neither truncates a log file nor drops a connected console client.
        ``kept_overlays``: the same for the temporary overlays of ``snapshot`` drives
        (see DriveOpener), which the caller deletes."""
        self.config = config
        self.lifecycle = Lifecycle()
        self.backends: List[CharBackend] = []  # opened here, closed by close()
        self.kept_chardevs = kept_chardevs
        from .devices.virtio.drives import DriveOpener  # with the rest of virtio, on demand

        self.drive_opener = DriveOpener(kept_overlays)
        self.memory = GuestMemory(config.ram_size)
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        model = cpu_model.resolve(config.cpu)
        hints = tcg_hints_path(config.kernel) if "tcg" in config.accel else None
        self.platform = Platform(self.memory, self.pio, self.mmio, self.lifecycle, model,
                                 config.icount_shift, config.icount_sleep, hints)
        self.accel = create_accelerator(config.accel, self.platform, notice,
                                        boots_linux=_is_linux_kernel(config.kernel))
        self.virtio = None
        self.pci = None
        self.iothread = None
        try:
            self._open_chardevs()
            self._attach_serial_ports()
            self._attach_i8042()
            self._attach_rtc()
            self._attach_post_code_port()
            self._attach_drives()
            self._attach_pci()
            for spec in config.devices:
                self._attach_device(spec)
            self._attach_iothread()
            self._attach_acpi_pm()
            self._attach_pvpanic()
            rsdp = self._build_acpi_tables()
            self._load_guest(rsdp)
        except BaseException:
            self.close()
            raise

    # --- attach steps ------------------------------------------------------------------
    def _open_chardevs(self) -> None:
        self.chardevs: Dict[str, CharBackend] = {}
        for chardev_id, spec in self.config.chardevs.items():
            self.chardevs[chardev_id] = self._open_backend(spec)

    def _open_backend(self, spec: str) -> CharBackend:
        kept = self.kept_chardevs
        # Only back-ends that do not hold this machine's lifecycle (stdio's Ctrl-A x does).
        if kept is not None and spec.startswith(("file:", "unix:")):
            backend = kept.get(spec)
            if backend is None:
                backend = kept[spec] = open_chardev(spec, self.lifecycle)
            return backend
        backend = open_chardev(spec, self.lifecycle)
        self.backends.append(backend)
        return backend

    def _serial_backend(self, spec: str) -> CharBackend:
        if spec.startswith("chardev:"):
            name = spec[len("chardev:"):]
            if name not in self.chardevs:
                raise ConfigError(f"-serial {spec}: no -chardev with id '{name}'")
            return self.chardevs[name]
        return self._open_backend(spec)

    def _attach_serial_ports(self) -> None:
        from .devices.serial import Serial
        from .panic_watch import PanicWatch

        if len(self.config.serial) > len(SERIAL_PORTS):
            raise ConfigError(f"at most {len(SERIAL_PORTS)} -serial ports are supported")
        self.serial_ports: List[Tuple[int, int]] = []  # (base, irq) of each UART attached
        for spec, (base, irq) in zip(self.config.serial, SERIAL_PORTS):
            backend = self._serial_backend(spec)
            if not backend.wants_device:
                continue
            uart = Serial(self.accel.irq_line(irq), PanicWatch(backend, self.lifecycle))
            self.serial_ports.append((base, irq))
            self.pio.attach(base, 8, uart)
            backend.start(uart.receive)

    def _attach_i8042(self) -> None:
        from .devices.i8042 import I8042

        controller = I8042(self.lifecycle, self.accel.irq_line(1), self.accel.irq_line(12))
        self.pio.attach(I8042_DATA, 1, controller.data_port)
        self.pio.attach(I8042_COMMAND, 1, controller.command_port)

    def _attach_rtc(self) -> None:
        from .devices.rtc import Rtc

        self.pio.attach(RTC_BASE, 2, Rtc(ram_size=self.config.ram_size))

    def _attach_post_code_port(self) -> None:
        from .devices.port80 import Port80

        self.pio.attach(POST_CODE_PORT, 1, Port80())

    def _virtio_builder(self):
        if self.virtio is None:
            from .devices.virtio.attach import VirtioMmioBuilder

            self.virtio = VirtioMmioBuilder(self.mmio, self.memory, self.accel.irq_line, self.chardevs,
                                            self.drive_opener.open, self.config.snapshot)
        return self.virtio

    def _attach_drives(self) -> None:
        """-drive and -blockdev come before any -device, as in QEMU, so devices can name them."""
        for text in self.config.drives:
            self._virtio_builder().add_drive(text)
        for text in self.config.blockdevs:
            self._virtio_builder().add_blockdev(text)

    def _attach_pci(self) -> None:
        """The PCI host bridge (always there, as on a PC) and the -netdev back-ends."""
        from .devices.pci.builder import PciBuilder

        drives = self.virtio.drives if self.virtio is not None else None
        self.pci = PciBuilder(self.pio, self.mmio, self.memory, self.accel.irq_line, self.accel.msi_sink(),
                              drives=drives, open_drive=self.drive_opener.open)
        for text in self.config.netdevs:
            self.pci.add_netdev(text)

    def _attach_device(self, spec: DeviceSpec) -> None:
        from .devices.pci.builder import DEVICE_FACTORIES as PCI_DEVICES
        from .devices.virtio.attach import DEVICE_FACTORIES as VIRTIO_DEVICES

        if spec.driver in VIRTIO_DEVICES:
            self._virtio_builder().add_device(spec.driver, spec.props)
            return
        if spec.driver in PCI_DEVICES:
            self.pci.add_device(spec.driver, spec.props)
            return
        factory = DEVICE_FACTORIES.get(spec.driver)
        if factory is None:
            known = ", ".join(sorted(set(DEVICE_FACTORIES) | set(VIRTIO_DEVICES) | set(PCI_DEVICES)))
            raise ConfigError(f"-device {spec.driver}: unknown or unsupported device (supported: {known})")
        factory(self, spec)

    def _attach_iothread(self) -> None:
        """Disks process their queues on one I/O thread, kicked through the accelerator's
        doorbells (KVM_IOEVENTFD) where it has them, so disk I/O never stalls the vCPU."""
        from .devices.virtio.iothread import IoThread

        iothread = IoThread()
        doorbell = getattr(self.accel, "doorbell", None)
        if self.virtio is not None:
            for slot in self.virtio.slots:
                if slot.transport.device.runs_on_iothread:
                    slot.transport.use_iothread(iothread, doorbell, slot.base)
        for placed in self.pci.slots:
            if placed.function.device.runs_on_iothread:
                placed.function.use_iothread(iothread, doorbell)
        if iothread.queue_names:
            self.iothread = iothread
        else:
            iothread.close()

    def _attach_acpi_pm(self) -> None:
        from .devices.acpi_pm import AcpiPm, attach_acpi_pm

        # The PM timer must count the time the guest's other timers count: under the software
        # CPU's instruction clock, host time runs far ahead of it, and Linux then "corrects"
        # its APIC timer calibration by the PM timer and ticks several times too fast.
        self.acpi_pm = AcpiPm(self.lifecycle, self.accel.irq_line(SCI_IRQ), self.accel.clock_ns)
        attach_acpi_pm(self.pio, self.acpi_pm)

    def _attach_pvpanic(self) -> None:
        """QEMU's pvpanic port, always there: a guest kernel panic then ends the VM with a
        failure status instead of the silent reset that ``panic=N`` asks for."""
        from .devices.pvpanic import DEFAULT_IOPORT, IOPORT_LEN, PvPanic

        self.pvpanic = PvPanic(self.lifecycle)
        self.pio.attach(DEFAULT_IOPORT, IOPORT_LEN, self.pvpanic)

    def _build_acpi_tables(self) -> int:
        """RSDP, FADT, MADT and a DSDT describing the devices attached so far."""
        from .acpi import AcpiConfig, build_acpi
        from .acpi.dsdt import pc_legacy_devices, pci_host_bridge, pvpanic, virtio_mmio
        from .devices.pvpanic import DEFAULT_IOPORT as PVPANIC_IOPORT

        devices = pc_legacy_devices(self.serial_ports) + [pci_host_bridge(), pvpanic(PVPANIC_IOPORT)]
        if self.virtio is not None:
            devices += [virtio_mmio(i, s.base, s.size, s.gsi) for i, s in enumerate(self.virtio.slots)]
        return build_acpi(self.memory, AcpiConfig(vcpus=self.config.smp, dsdt_devices=devices))

    def _load_guest(self, rsdp: int) -> None:
        from .acpi import ACPI_RESERVED_RANGES
        from .boot.loader import load_kernel
        from .boot.zeropage import boot_rng_seed

        cfg = self.config
        initrd = Path(cfg.initrd) if cfg.initrd else None
        state = load_kernel(self.memory, Path(cfg.kernel), initrd, cfg.append, cfg.decompress,
                            reserved=ACPI_RESERVED_RANGES, acpi_rsdp_addr=rsdp,
                            rng_seed=boot_rng_seed(cfg.seed))
        self.accel.load_boot_state(state)

    # --- running -------------------------------------------------------------------------
    def run(self) -> StopRequest:
        self.pci.start()  # network back-ends' reader threads
        if self.iothread is not None:
            self.iothread.start()
        return self.accel.run()

    # --- control from another thread (the QMP monitor) -------------------------------------
    PAUSE_TIMEOUT_S = 5.0

    @property
    def paused(self) -> bool:
        return self.accel.pause_gate.requested

    def pause(self) -> bool:
        """Stop the vCPU at its next exit; True once it is held (False: not running yet)."""
        self.accel.pause_gate.request()
        self.accel.kick()
        return self.accel.pause_gate.wait_parked(self.PAUSE_TIMEOUT_S)

    def resume(self) -> None:
        self.accel.pause_gate.release()

    def request_powerdown(self) -> bool:
        """Press the ACPI power button; False when the machine has no ACPI PM device."""
        pm = getattr(self, "acpi_pm", None)
        if pm is None:
            return False
        pm.press_power_button()
        return True

    def registers(self) -> Dict[str, int]:
        """The boot vCPU's registers by name; pause first for a consistent view."""
        return self.accel.registers()

    def close(self) -> None:
        if getattr(self, "iothread", None) is not None:
            self.iothread.stop()  # the batch in flight completes before the disks close
        if getattr(self, "pci", None) is not None:
            self.pci.close()
            self.pci = None
        if getattr(self, "virtio", None) is not None:
            self.virtio.close()
            self.virtio = None
        for backend in self.backends:
            backend.close()
        self.backends = []
        accel = getattr(self, "accel", None)
        if accel is not None:
            accel.close()
        if getattr(self, "iothread", None) is not None:
            self.iothread.close()  # its eventfds outlive the VM's ioeventfds
            self.iothread = None


def _attach_debug_exit(machine: Machine, spec: DeviceSpec) -> None:
    from .devices.debug_exit import DebugExit

    props = dict(spec.props)
    iobase = parse_int(props.pop("iobase", "0x501"), "isa-debug-exit iobase")
    iosize = parse_int(props.pop("iosize", "2"), "isa-debug-exit iosize")
    if props:
        raise ConfigError(f"-device isa-debug-exit: unknown property '{next(iter(props))}' (iobase, iosize)")
    if iosize not in (1, 2, 4):
        raise ConfigError(f"-device isa-debug-exit: iosize must be 1, 2 or 4, not {iosize}")
    machine.pio.attach(iobase, iosize, DebugExit(machine.lifecycle))


DEVICE_FACTORIES: Dict[str, Callable[[Machine, DeviceSpec], None]] = {
    "isa-debug-exit": _attach_debug_exit,
}

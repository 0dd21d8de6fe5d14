"""The Debian cloud kernel (X86_MPPARSE unset) under /dev/kvm with pyhv's ACPI tables: it must
find the IOAPIC and overrides in the MADT, use the PM timer, and power off through S5."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pyhv.accel.base import Platform
from pyhv.acpi import AcpiConfig, build_acpi, set_boot_params_rsdp
from pyhv.acpi.dsdt import pc_legacy_devices
from pyhv.bus import Bus
from pyhv.chardev import BufferBackend
from pyhv.devices.acpi_pm import AcpiPm, attach_acpi_pm
from pyhv.devices.serial import REGISTER_COUNT, Serial
from pyhv.errors import PyhvError, VmFatalError
from pyhv.kvm.system import kvm_available
from pyhv.lifecycle import Lifecycle, Shutdown
from pyhv.memory import GuestMemory, MiB

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.slow,
    pytest.mark.skipif(kvm_available() is not None, reason=f"KVM unusable: {kvm_available()}"),
]

COM1, COM1_IRQ = 0x3F8, 4
SECONDS = 240
# The nested kvm_pvm backend of the team's hosts fails to emulate lock cmpxchg16b, xrstor and
# int3 (shared/README.md), so Linux stops there, after parsing the MADT but before power-off.
BACKEND_FAILURE = "emulation failure"


@pytest.fixture(scope="module")
def default_guest():
    from pyhv.guestimage.default import build_default_guest

    try:
        return build_default_guest()
    except PyhvError as err:
        pytest.skip(f"no default guest (Debian kernel + busybox initramfs): {err}")


def test_debian_kernel_uses_madt_pm_timer_and_powers_off_through_s5(default_guest, tmp_path: Path) -> None:
    from pyhv.accel.kvm import KvmAccelerator
    from pyhv.boot import load_kernel

    memory = GuestMemory(256 * MiB)
    pio, lifecycle, console = Bus("pio"), Lifecycle(), BufferBackend()
    accel = KvmAccelerator(Platform(memory=memory, pio=pio, mmio=Bus("mmio"), lifecycle=lifecycle, cpu_model=None))
    pio.attach(COM1, REGISTER_COUNT, Serial(accel.irq_line(COM1_IRQ), console))
    pm = AcpiPm(lifecycle, accel.irq_line(9), time.monotonic_ns)
    config = AcpiConfig(vcpus=1, dsdt_devices=pc_legacy_devices([(COM1, COM1_IRQ)], i8042=False, cmos_rtc=False),
                        i8042=False, cmos_rtc=False)
    attach_acpi_pm(pio, pm, config.ports)
    rsdp = build_acpi(memory, config)
    # The guest's /init runs the command after " -- " and then calls poweroff -f.
    cmdline = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 cryptomgr.notests -- true"
    accel.load_boot_state(load_kernel(memory, default_guest.kernel, default_guest.initrd, cmdline))
    assert set_boot_params_rsdp(memory, rsdp)

    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(SECONDS):
            lifecycle.shutdown(99, "test watchdog")

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    failure = None
    try:
        stop = accel.run()
    except VmFatalError as err:
        failure = err
    finally:
        done.set()
        thread.join()
        accel.close()
    log = console.output.decode(errors="replace")
    (tmp_path / "console.log").write_text(log)
    assert f"ACPI: RSDP 0x{rsdp:016X}" in log, log[-3000:]
    assert "ACPI: PM-Timer IO Port: 0x608" in log
    assert "IOAPIC[0]: apic_id 0, version" in log and "address 0xfec00000, GSI 0-23" in log
    assert "ACPI: INT_SRC_OVR (bus 0 bus_irq 0 global_irq 2 high edge)" in log
    assert "ACPI: INT_SRC_OVR (bus 0 bus_irq 9 global_irq 9 high level)" in log
    assert "ACPI: LAPIC_NMI (acpi_id[0xff] dfl dfl lint[0x1])" in log
    assert "ACPI: Using ACPI (MADT) for SMP configuration information" in log
    assert "smpboot: Allowing 1 CPUs, 0 hotplug CPUs" in log
    if failure is not None and BACKEND_FAILURE in str(failure):
        pytest.xfail(f"KVM backend emulation failure after the MADT was parsed, before power-off: {failure}")
    assert failure is None, f"{failure}\n{log[-3000:]}"
    assert "(supports S0 S5)" in log
    assert "pyhv-guest: exit status 0" in log
    assert stop == Shutdown(0, "ACPI power-off"), log[-3000:]

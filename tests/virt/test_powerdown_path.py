"""`virsh shutdown` reaches the guest: the domain process's powerdown sets the ACPI power-button
status a guest reads at the PM1 status port, and raises the SCI once the guest enables it.

The Linux scenario (tests/virt/test_virsh_linux.py) needs minutes of boot; this checks the
host half of the same path on a machine that is built but never run.
"""

from __future__ import annotations

import pytest

from pyhv.devices.acpi_pm import PWRBTN_EN, PWRBTN_STS, PmPorts
from pyhv.qmp.commands import QmpError
from pyhv.virt.domain import parse_domain
from pyhv.virt.runner import DomainRunner
from pyhv.virt.store import Store

PM1_STS_PORT = PmPorts().pm_base
PM1_EN_PORT = PmPorts().pm_base + 2


class RecordingLine:
    """Stands in for the SCI's interrupt line and remembers every level driven on it."""

    def __init__(self) -> None:
        self.levels = []

    def set_level(self, level: bool) -> None:
        self.levels.append(level)


@pytest.fixture
def runner(store_env, make_domain, loop_kernel):
    store = Store.open(None)
    dom = parse_domain(make_domain("powerdown", loop_kernel, dom_type="qemu"))
    domain_runner = DomainRunner(store, dom, 1)
    assert domain_runner.config.accel == ("tcg",)
    domain_runner.machine = domain_runner._build()
    yield domain_runner
    domain_runner.machine.close()


def test_powerdown_sets_the_power_button_status_the_guest_reads(runner) -> None:
    pio = runner.machine.pio
    assert pio.read(PM1_STS_PORT, 2) & PWRBTN_STS == 0
    runner.powerdown()  # what QMP system_powerdown, hence virsh shutdown, calls
    assert pio.read(PM1_STS_PORT, 2) & PWRBTN_STS


def test_powerdown_raises_the_sci_once_the_guest_enables_the_button(runner) -> None:
    pm = runner.machine.acpi_pm
    line = RecordingLine()
    pm._sci = line  # observe the line the accelerator would deliver as IRQ 9
    runner.powerdown()
    assert line.levels == []  # the button is not enabled yet: a status bit only
    runner.machine.pio.write(PM1_EN_PORT, 2, PWRBTN_EN)  # Linux's button driver enables it
    assert line.levels == [True]
    runner.machine.pio.write(PM1_STS_PORT, 2, PWRBTN_STS)  # and acknowledges the event
    assert line.levels == [True, False]


def test_powerdown_without_a_machine_is_a_clear_error(store_env, make_domain, loop_kernel) -> None:
    dom = parse_domain(make_domain("idle", loop_kernel, dom_type="qemu"))
    idle = DomainRunner(Store.open(None), dom, 1)
    with pytest.raises(QmpError, match="the machine is being rebuilt"):
        idle.powerdown()


def test_reboot_presses_the_button_and_boots_again_after_the_guest_powers_off(runner) -> None:
    from pyhv.lifecycle import Shutdown

    events = []
    runner._emit = lambda event, data: events.append(event)
    runner.reboot()  # what virsh reboot asks through QMP x-guest-reboot
    assert runner.machine.pio.read(PM1_STS_PORT, 2) & PWRBTN_STS
    # The guest acts on the button and powers off: the domain boots again.
    assert runner._after(Shutdown(0, "ACPI power-off")) == ("restart", "booted")
    assert events == ["SHUTDOWN", "RESET"]
    # Only once: the next power-off follows on_poweroff (destroy by default).
    assert runner._after(Shutdown(0, "ACPI power-off")) == ("stop", "shutdown")


def test_reboot_without_a_power_button_fails_and_leaves_power_off_alone(runner, monkeypatch) -> None:
    from pyhv.lifecycle import Shutdown

    def no_button():
        raise QmpError("GenericError", "this machine has no ACPI power button")

    monkeypatch.setattr(runner, "powerdown", no_button)
    with pytest.raises(QmpError):
        runner.reboot()
    runner._emit = lambda event, data: None
    assert runner._after(Shutdown(0, "ACPI power-off")) == ("stop", "shutdown")


@pytest.mark.parametrize("on_crash, expected", [("destroy", ("stop", "crashed")), ("restart", ("restart", "crashed"))])
def test_a_kernel_panic_is_a_crash_that_on_crash_decides(runner, on_crash, expected) -> None:
    from pyhv.lifecycle import Reset, Shutdown

    events = []
    runner._emit = lambda event, data: events.append((event, data))
    runner.dom.on_crash = on_crash
    action = "run" if on_crash == "restart" else "poweroff"
    # The pvpanic device ended the machine (the guest's driver was loaded) ...
    assert runner._after(Shutdown(1, "guest kernel panicked")) == expected
    # ... or the kernel printed its panic on the console and then reset (panic=-1).
    assert runner._after(Reset("i8042 reset"), "VFS: Unable to mount root fs") == expected
    assert events == [("GUEST_PANICKED", {"action": action})] * 2
    # A reset with no panic before it is still a reboot, as on_reboot says (restart by default).
    events.clear()
    assert runner._after(Reset("i8042 reset")) == ("restart", "booted")
    assert [event for event, _ in events] == ["RESET"]

"""The ACPI PM registers driven through the port bus, as a guest's ACPICA would."""

from __future__ import annotations

import threading

import pytest

from pyhv.bus import Bus
from pyhv.devices.acpi_pm import AcpiPm, PmPorts, attach_acpi_pm
from pyhv.errors import BusError
from pyhv.irq import RecordingIrqLine
from pyhv.lifecycle import Lifecycle, Reset, Shutdown

# Register addresses and bits written out from ACPI 6.4 chapter 4 and the PIIX4 port map,
# not taken from the module, so a wrong constant there fails here.
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0x600, 0x602, 0x604, 0x608
GPE0_STS, GPE0_EN = 0xAFE0, 0xAFE2
RESET_PORT = 0xCF9
TMR_STS, PWRBTN_STS, WAK_STS = 1 << 0, 1 << 8, 1 << 15
TMR_EN, PWRBTN_EN = 1 << 0, 1 << 8
SCI_EN, SLP_EN = 1 << 0, 1 << 13
PM_TIMER_HZ = 3_579_545


class FakeClock:
    def __init__(self, start_ns: int = 5_000_000_000) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: int) -> None:
        self.now_ns += ns


class Rig:
    def __init__(self) -> None:
        self.lifecycle = Lifecycle()
        self.sci = RecordingIrqLine()
        self.clock = FakeClock()
        self.pm = AcpiPm(self.lifecycle, self.sci, self.clock)
        self.bus = Bus("pio")
        attach_acpi_pm(self.bus, self.pm)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_sci_enabled_from_reset_and_sleep_enable_reads_zero(rig: Rig) -> None:
    assert rig.bus.read(PM1_CNT, 2) & SCI_EN
    rig.bus.write(PM1_CNT, 2, SCI_EN | (3 << 10))
    assert rig.bus.read(PM1_CNT, 2) == SCI_EN | (3 << 10)


def test_s5_powers_off_through_the_lifecycle(rig: Rig) -> None:
    rig.bus.write(PM1_CNT, 2, SCI_EN | (5 << 10))  # SLP_TYP alone does nothing
    assert rig.lifecycle.pending is None
    rig.bus.write(PM1_CNT, 2, SCI_EN | (5 << 10) | SLP_EN)
    assert rig.lifecycle.pending == Shutdown(0, "ACPI power-off")
    assert rig.lifecycle.stopped.is_set()


def test_s5_by_byte_write_to_the_high_half(rig: Rig) -> None:
    # SLP_TYP and SLP_EN live in the register's second byte; ACPICA may write it alone.
    rig.bus.write(PM1_CNT + 1, 1, ((5 << 10) | SLP_EN) >> 8)
    assert isinstance(rig.lifecycle.pending, Shutdown)


def test_other_sleep_types_are_refused_and_the_vm_keeps_running(rig: Rig) -> None:
    rig.bus.write(PM1_CNT, 2, SCI_EN | (1 << 10) | SLP_EN)
    assert rig.lifecycle.pending is None
    assert rig.pm.refused_sleep_types == [1]


@pytest.mark.parametrize("value", [0x06, 0x04, 0x0E])
def test_reset_register_resets(rig: Rig, value: int) -> None:
    rig.bus.write(RESET_PORT, 1, value)
    assert rig.lifecycle.pending == Reset("ACPI reset")


def test_reset_register_latches_sys_rst_without_resetting(rig: Rig) -> None:
    rig.bus.write(RESET_PORT, 1, 0x02)  # Linux reboot=pci: SYS_RST first, then RST_CPU
    assert rig.lifecycle.pending is None
    assert rig.bus.read(RESET_PORT, 1) == 0x02
    rig.bus.write(RESET_PORT, 1, 0x06)
    assert isinstance(rig.lifecycle.pending, Reset)


def test_power_button_sets_status_but_raises_sci_only_when_enabled(rig: Rig) -> None:
    rig.pm.press_power_button()
    assert rig.bus.read(PM1_STS, 2) & PWRBTN_STS
    assert rig.sci.level is False and rig.sci.history == []
    rig.bus.write(PM1_EN, 2, PWRBTN_EN)  # the pending status now asserts the SCI
    assert rig.sci.level is True
    rig.bus.write(PM1_STS, 2, PWRBTN_STS)  # the guest acknowledges
    assert rig.sci.level is False
    assert rig.bus.read(PM1_STS, 2) & PWRBTN_STS == 0
    rig.pm.press_power_button()
    assert rig.sci.history == [True, False, True]


def test_power_button_does_not_raise_sci_while_sci_en_is_clear(rig: Rig) -> None:
    rig.bus.write(PM1_CNT, 2, 0)
    rig.bus.write(PM1_EN, 2, PWRBTN_EN)
    rig.pm.press_power_button()
    assert rig.sci.level is False
    rig.bus.write(PM1_CNT, 2, SCI_EN)
    assert rig.sci.level is True


def test_status_is_write_one_to_clear(rig: Rig) -> None:
    rig.pm.press_power_button()
    rig.pm.pm1_sts |= WAK_STS
    rig.bus.write(PM1_STS, 2, 0)  # writing zeros changes nothing
    assert rig.bus.read(PM1_STS, 2) & (PWRBTN_STS | WAK_STS) == PWRBTN_STS | WAK_STS
    rig.bus.write(PM1_STS, 2, WAK_STS)
    assert rig.bus.read(PM1_STS, 2) & (PWRBTN_STS | WAK_STS) == PWRBTN_STS


def test_dword_access_to_the_event_block_touches_status_and_enable(rig: Rig) -> None:
    rig.pm.press_power_button()
    rig.bus.write(PM1_STS, 4, PWRBTN_STS | (PWRBTN_EN << 16))
    assert rig.bus.read(PM1_STS, 4) == PWRBTN_EN << 16


def test_enable_keeps_only_defined_bits(rig: Rig) -> None:
    rig.bus.write(PM1_EN, 2, 0xFFFF)
    assert rig.bus.read(PM1_EN, 2) == 0x0721  # TMR, GBL, PWRBTN, SLPBTN, RTC enables


def test_timer_counts_at_3_579545_mhz(rig: Rig) -> None:
    assert rig.bus.read(PM_TMR, 4) == 0
    rig.clock.advance(1_000_000_000)
    assert rig.bus.read(PM_TMR, 4) == PM_TIMER_HZ
    rig.clock.advance(1_000)  # 1 us is 3.58 ticks
    assert rig.bus.read(PM_TMR, 4) == (1_000_001_000 * PM_TIMER_HZ) // 10**9


def test_timer_wraps_at_24_bits_and_sets_tmr_sts_on_bit_23(rig: Rig) -> None:
    ns_per_tick = 10**9 / PM_TIMER_HZ
    rig.clock.advance(int((1 << 23) * ns_per_tick) - 1000)
    assert rig.bus.read(PM1_STS, 2) & TMR_STS == 0
    rig.clock.advance(2000)
    assert rig.bus.read(PM1_STS, 2) & TMR_STS
    rig.bus.write(PM1_STS, 2, TMR_STS)
    rig.clock.advance(int((1 << 23) * ns_per_tick))  # bit 23 falls as the counter wraps
    value = rig.bus.read(PM_TMR, 4)
    assert value < (1 << 24)
    assert rig.bus.read(PM1_STS, 2) & TMR_STS


def test_timer_overflow_raises_sci_when_enabled(rig: Rig) -> None:
    rig.bus.write(PM1_EN, 2, TMR_EN)
    rig.clock.advance(3 * 10**9)  # past 2^23 ticks (2.34 s)
    rig.pm.update_timer_status()
    assert rig.sci.level is True


def test_timer_ignores_writes(rig: Rig) -> None:
    rig.clock.advance(10**6)
    before = rig.bus.read(PM_TMR, 4)
    rig.bus.write(PM_TMR, 4, 0)
    assert rig.bus.read(PM_TMR, 4) == before


def test_gpe0_status_enable_and_sci(rig: Rig) -> None:
    rig.pm.raise_gpe(3)
    assert rig.bus.read(GPE0_STS, 1) == 1 << 3
    assert rig.sci.level is False
    rig.bus.write(GPE0_EN, 1, 1 << 3)
    assert rig.sci.level is True
    rig.bus.write(GPE0_STS, 1, 1 << 3)
    assert rig.sci.level is False
    with pytest.raises(ValueError, match="not 16"):
        rig.pm.raise_gpe(16)


def test_power_button_from_other_threads(rig: Rig) -> None:
    rig.bus.write(PM1_EN, 2, PWRBTN_EN)
    threads = [threading.Thread(target=rig.pm.press_power_button) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert rig.sci.level is True
    assert rig.sci.history == [True]  # a level, raised once however many presses


def test_ports_can_move_and_overlaps_are_refused() -> None:
    lifecycle = Lifecycle()
    pm = AcpiPm(lifecycle, RecordingIrqLine(), FakeClock())
    bus = Bus("pio")
    attach_acpi_pm(bus, pm, PmPorts(pm_base=0xB000, gpe0_base=0xB100, reset=0xCF9))
    bus.write(0xB004, 2, (5 << 10) | SLP_EN)
    assert isinstance(lifecycle.pending, Shutdown)
    with pytest.raises(BusError, match="overlaps"):
        attach_acpi_pm(bus, AcpiPm(lifecycle, RecordingIrqLine(), FakeClock()), PmPorts(pm_base=0xB008))

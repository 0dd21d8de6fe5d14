"""The CMOS RTC read through ports 0x70/0x71 against an injected clock."""

from __future__ import annotations

import calendar

import pytest

from pyhv.bus import Bus
from pyhv.devices import rtc as cmos
from pyhv.devices.rtc import Rtc
from pyhv.memory import GiB, MiB

# Thursday 29 February 2024, 13:45:30 UTC: a leap day, afternoon, for BCD and 12-hour cases.
LEAP_DAY = calendar.timegm((2024, 2, 29, 13, 45, 30, 0, 0, 0))


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Cmos:
    def __init__(self, now: float = LEAP_DAY, ram_size: int = 128 * MiB) -> None:
        self.clock = FakeClock(now)
        self.rtc = Rtc(ram_size, clock=self.clock)
        self.bus = Bus("pio")
        self.bus.attach(0x70, 2, self.rtc)

    def read(self, index: int) -> int:
        self.bus.write(0x70, 1, index)
        return self.bus.read(0x71, 1)

    def write(self, index: int, value: int) -> None:
        self.bus.write(0x70, 1, index)
        self.bus.write(0x71, 1, value)

    def time(self) -> tuple:
        return tuple(self.read(r) for r in (cmos.REG_CENTURY, cmos.REG_YEAR, cmos.REG_MONTH,
                                            cmos.REG_DAY_OF_MONTH, cmos.REG_DAY_OF_WEEK,
                                            cmos.REG_HOURS, cmos.REG_MINUTES, cmos.REG_SECONDS))


def test_time_in_bcd_24_hour_by_default() -> None:
    c = Cmos()
    assert c.time() == (0x20, 0x24, 0x02, 0x29, 5, 0x13, 0x45, 0x30)  # Thursday = 5


def test_time_in_binary() -> None:
    c = Cmos()
    c.write(cmos.REG_B, cmos.B_24_HOUR | cmos.B_BINARY)
    assert c.time() == (20, 24, 2, 29, 5, 13, 45, 30)


@pytest.mark.parametrize("hour,bcd,binary", [
    (0, 0x12, 12), (1, 0x01, 1), (11, 0x11, 11), (12, 0x92, 0x8C), (13, 0x81, 0x81), (23, 0x91, 0x8B),
])
def test_12_hour_mode_with_pm_bit(hour: int, bcd: int, binary: int) -> None:
    c = Cmos(calendar.timegm((2023, 1, 1, hour, 0, 0, 0, 0, 0)))
    c.write(cmos.REG_B, 0)
    assert c.read(cmos.REG_HOURS) == bcd
    c.write(cmos.REG_B, cmos.B_BINARY)
    assert c.read(cmos.REG_HOURS) == binary


def test_clock_runs_with_the_injected_clock() -> None:
    c = Cmos(calendar.timegm((1999, 12, 31, 23, 59, 59, 0, 0, 0)))
    assert c.time() == (0x19, 0x99, 0x12, 0x31, 6, 0x23, 0x59, 0x59)  # a Friday
    c.clock.now += 1
    assert c.time() == (0x20, 0x00, 0x01, 0x01, 7, 0x00, 0x00, 0x00)


def test_guest_sets_the_time_with_set_bit() -> None:
    c = Cmos()
    c.write(cmos.REG_B, cmos.B_SET | cmos.B_24_HOUR)
    c.write(cmos.REG_HOURS, 0x08)
    c.write(cmos.REG_MINUTES, 0x00)
    c.write(cmos.REG_SECONDS, 0x00)
    c.write(cmos.REG_DAY_OF_MONTH, 0x01)
    c.write(cmos.REG_MONTH, 0x03)
    c.clock.now += 10  # frozen while SET is on
    assert c.time() == (0x20, 0x24, 0x03, 0x01, 5, 0x08, 0x00, 0x00)
    assert not c.read(cmos.REG_A) & cmos.A_UIP
    c.write(cmos.REG_B, cmos.B_24_HOUR)
    c.clock.now += 61
    assert c.time() == (0x20, 0x24, 0x03, 0x01, 6, 0x08, 0x01, 0x01)  # 1 March 2024 is a Friday


def test_write_in_12_hour_binary_mode_without_set() -> None:
    c = Cmos()
    c.write(cmos.REG_B, cmos.B_BINARY)
    c.write(cmos.REG_HOURS, cmos.HOUR_PM | 12)  # 12 PM is noon
    c.write(cmos.REG_B, cmos.B_BINARY | cmos.B_24_HOUR)
    assert c.read(cmos.REG_HOURS) == 12
    assert c.read(cmos.REG_MINUTES) == 45  # the rest of the time kept running


def test_nonsense_date_is_clamped_not_fatal() -> None:
    c = Cmos()
    c.write(cmos.REG_MONTH, 0x00)
    c.write(cmos.REG_DAY_OF_MONTH, 0x99)
    assert (c.read(cmos.REG_MONTH), c.read(cmos.REG_DAY_OF_MONTH)) == (0x01, 0x31)


def test_uip_rises_just_before_each_update() -> None:
    c = Cmos(LEAP_DAY + 0.5)
    assert not c.read(cmos.REG_A) & cmos.A_UIP
    c.clock.now = LEAP_DAY + 0.9999
    assert c.read(cmos.REG_A) == cmos.A_UIP | cmos.A_DEFAULT
    c.write(cmos.REG_A, 0x70)  # divider held in reset: no updates
    assert not c.read(cmos.REG_A) & cmos.A_UIP


def test_status_registers_c_and_d() -> None:
    c = Cmos()
    assert c.read(cmos.REG_D) == cmos.D_VALID_RAM_AND_TIME
    c.write(cmos.REG_D, 0)
    assert c.read(cmos.REG_D) == cmos.D_VALID_RAM_AND_TIME
    c.write(cmos.REG_C, 0xF0)
    assert c.read(cmos.REG_C) == 0


def test_nvram_keeps_writes_and_ignores_nmi_bit() -> None:
    c = Cmos()
    c.write(0x40, 0xAB)
    c.write(0x80 | 0x41, 0xCD)  # bit 7 of the index masks NMI; the register is 0x41
    assert c.read(0x40) == 0xAB and c.read(0x41) == 0xCD
    assert c.rtc.read_register(0x41) == 0xCD
    assert c.bus.read(0x70, 1) == 0xFF  # the index port is write-only
    c.rtc.reset()
    assert c.read(0x40) == 0xAB  # battery-backed


@pytest.mark.parametrize("ram_size,expected", [
    (512 * 1024, {0x15: 0x00, 0x16: 0x02, 0x17: 0, 0x18: 0, 0x34: 0, 0x35: 0}),
    (32 * MiB, {0x15: 0x80, 0x16: 0x02, 0x17: 0x00, 0x18: 0x7C, 0x30: 0x00, 0x31: 0x7C,
                0x34: 0x00, 0x35: 0x01, 0x5B: 0, 0x5C: 0, 0x5D: 0}),
    (128 * MiB, {0x17: 0xFF, 0x18: 0xFF, 0x30: 0xFF, 0x31: 0xFF, 0x34: 0x00, 0x35: 0x07}),
    # 8 GiB: 3 GiB below the PCI hole, 5 GiB above 4 GiB.
    (8 * GiB, {0x34: 0x00, 0x35: 0xBF, 0x5B: 0x00, 0x5C: 0x40, 0x5D: 0x01}),
])
def test_ram_size_bytes(ram_size: int, expected: dict) -> None:
    c = Cmos(ram_size=ram_size)
    assert {index: c.read(index) for index in expected} == expected

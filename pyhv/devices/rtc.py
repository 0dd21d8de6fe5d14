"""The MC146818 CMOS real-time clock and its 128 bytes of NVRAM, at ports 0x70 (index) and 0x71.

The time registers are not stored: each read converts ``clock() + offset`` (UTC, as QEMU's
default ``-rtc base=utc``) into the format register B asks for, BCD or binary, 12- or
24-hour. A guest that sets the clock moves ``offset``. While register B's SET bit is on the
time is frozen, writes land in the frozen copy, and clearing SET starts the clock from it.

The RAM-size bytes QEMU's pc machine writes for firmware are filled from the RAM size.

Not emulated: the periodic, alarm and update-ended interrupts on IRQ 8. Register C always
reads 0, and the alarm registers are plain NVRAM. Linux needs none of these to boot or to
read the time; it polls UIP instead.
"""

from __future__ import annotations

import calendar
import math
import time
from typing import Callable, Dict, Optional

from ..memory import FOUR_GIB, MiB, ram_layout

INDEX_OFFSET = 0
DATA_OFFSET = 1
INDEX_MASK = 0x7F  # bit 7 of the index port masks NMI on the PC; ignored here
NVRAM_SIZE = 128

REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_DAY_OF_WEEK = 0x06  # 1 = Sunday
REG_DAY_OF_MONTH = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_CENTURY = 0x32  # where QEMU and the ACPI FADT's CENTURY field put it

TIME_REGISTERS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK, REG_DAY_OF_MONTH,
                  REG_MONTH, REG_YEAR, REG_CENTURY)

A_UIP = 0x80  # update in progress: the time registers are about to change
A_DIVIDER_MASK = 0x70
A_DIVIDER_NORMAL = 0x20  # 32.768 kHz time base, oscillator running
A_DEFAULT = 0x26  # normal divider, 1.024 kHz periodic rate

B_SET = 0x80
B_INTERRUPT_ENABLES = 0x70  # PIE, AIE, UIE
B_BINARY = 0x04
B_24_HOUR = 0x02
B_DEFAULT = B_24_HOUR

D_VALID_RAM_AND_TIME = 0x80

HOUR_PM = 0x80  # in 12-hour mode, bit 7 of the hours register

UIP_WINDOW = 244e-6  # UIP rises this long before each update of the time registers

# RAM-size bytes of the PC CMOS map, as QEMU's pc machine fills them.
CMOS_BASE_MEMORY = 0x15  # KiB below 1 MiB (2 bytes)
CMOS_EXTENDED_MEMORY = 0x17  # KiB above 1 MiB, capped at 65535 (2 bytes)
CMOS_EXTENDED_MEMORY_COPY = 0x30  # the same value again
CMOS_MEMORY_ABOVE_16M = 0x34  # 64 KiB units between 16 MiB and the 4 GiB hole (2 bytes)
CMOS_MEMORY_ABOVE_4G = 0x5B  # 64 KiB units above 4 GiB (3 bytes)

KiB = 1024
BASE_MEMORY_KIB = 640


def to_bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


def cmos_memory_bytes(ram_size: int) -> Dict[int, int]:
    """The CMOS RAM-size bytes for ``ram_size`` bytes of guest RAM laid out by pyhv.memory."""
    below_4g = sum(r.size for r in ram_layout(ram_size) if r.guest_addr < FOUR_GIB)
    above_4g = ram_size - below_4g
    base_kib = min(below_4g // KiB, BASE_MEMORY_KIB)
    extended_kib = min(max(below_4g - MiB, 0) // KiB, 0xFFFF)
    above_16m = min(max(below_4g - 16 * MiB, 0) // (64 * KiB), 0xFFFF)
    above_4g_units = above_4g // (64 * KiB)
    values: Dict[int, int] = {}
    for index, value, width in (
        (CMOS_BASE_MEMORY, base_kib, 2),
        (CMOS_EXTENDED_MEMORY, extended_kib, 2),
        (CMOS_EXTENDED_MEMORY_COPY, extended_kib, 2),
        (CMOS_MEMORY_ABOVE_16M, above_16m, 2),
        (CMOS_MEMORY_ABOVE_4G, above_4g_units, 3),
    ):
        for i in range(width):
            values[index + i] = (value >> (8 * i)) & 0xFF
    return values


class Rtc:
    """The CMOS RTC; attach it on the port bus at 0x70 with length 2."""

    def __init__(self, ram_size: int, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._offset = 0.0  # guest time minus host clock, in seconds
        self._cmos = bytearray(NVRAM_SIZE)
        for index, value in cmos_memory_bytes(ram_size).items():
            self._cmos[index] = value
        self._cmos[REG_A] = A_DEFAULT
        self._cmos[REG_B] = B_DEFAULT
        self._held: Optional[Dict[int, int]] = None  # the frozen time while B.SET is on
        self.index = 0

    def reset(self) -> None:
        """A system reset clears the interrupt enables; time and NVRAM are battery-backed."""
        self._cmos[REG_B] &= ~B_INTERRUPT_ENABLES & 0xFF

    # --- bus Device protocol ----------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == DATA_OFFSET:
            return self.read_register(self.index)
        return 0xFF  # the index port is write-only

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == DATA_OFFSET:
            self.write_register(self.index, value & 0xFF)
        elif offset == INDEX_OFFSET:
            self.index = value & INDEX_MASK

    # --- registers -----------------------------------------------------------------------------
    def read_register(self, index: int) -> int:
        index &= INDEX_MASK
        if index in TIME_REGISTERS:
            return self._encode(index, self._time_fields()[index])
        if index == REG_A:
            return self._cmos[REG_A] | (A_UIP if self._update_in_progress() else 0)
        if index == REG_C:
            return 0  # no interrupt flags are ever raised; reading would clear them
        if index == REG_D:
            return D_VALID_RAM_AND_TIME
        return self._cmos[index]

    def write_register(self, index: int, value: int) -> None:
        index &= INDEX_MASK
        if index in TIME_REGISTERS:
            self._write_time(index, value)
        elif index == REG_A:
            self._cmos[REG_A] = value & ~A_UIP & 0xFF
        elif index == REG_B:
            self._write_b(value)
        elif index in (REG_C, REG_D):
            pass  # read-only
        else:
            self._cmos[index] = value

    # --- time ---------------------------------------------------------------------------------
    def _guest_time(self) -> float:
        return self._clock() + self._offset

    def _time_fields(self) -> Dict[int, int]:
        if self._held is not None:
            return self._held
        tm = time.gmtime(math.floor(self._guest_time()))
        return {
            REG_SECONDS: tm.tm_sec,
            REG_MINUTES: tm.tm_min,
            REG_HOURS: tm.tm_hour,
            REG_DAY_OF_WEEK: (tm.tm_wday + 1) % 7 + 1,  # tm_wday counts from Monday = 0
            REG_DAY_OF_MONTH: tm.tm_mday,
            REG_MONTH: tm.tm_mon,
            REG_YEAR: tm.tm_year % 100,
            REG_CENTURY: tm.tm_year // 100,
        }

    def _update_in_progress(self) -> bool:
        running = (self._cmos[REG_A] & A_DIVIDER_MASK) == A_DIVIDER_NORMAL
        if not running or self._cmos[REG_B] & B_SET:
            return False
        now = self._guest_time()
        return now - math.floor(now) >= 1.0 - UIP_WINDOW

    def _write_time(self, index: int, value: int) -> None:
        fields = dict(self._time_fields())
        fields[index] = self._decode(index, value)
        if self._held is not None:
            self._held = fields
        else:
            self._start_clock_at(fields)

    def _write_b(self, value: int) -> None:
        was_set = self._cmos[REG_B] & B_SET
        if value & B_SET and not was_set:
            self._held = dict(self._time_fields())
        self._cmos[REG_B] = value
        if was_set and not value & B_SET and self._held is not None:
            held, self._held = self._held, None
            self._start_clock_at(held)

    def _start_clock_at(self, fields: Dict[int, int]) -> None:
        # A guest may write nonsense (month 0, invalid BCD); clamp rather than fail, as the
        # chip itself would just count on from whatever it holds.
        year = min(max(fields[REG_CENTURY] * 100 + fields[REG_YEAR], 1), 9999)
        month = min(max(fields[REG_MONTH], 1), 12)
        day = min(max(fields[REG_DAY_OF_MONTH], 1), calendar.monthrange(year, month)[1])
        seconds = calendar.timegm((year, month, day, fields[REG_HOURS], fields[REG_MINUTES],
                                   fields[REG_SECONDS], 0, 0, 0))
        self._offset = seconds - self._clock()

    # --- formats -------------------------------------------------------------------------------
    def _binary(self) -> bool:
        return bool(self._cmos[REG_B] & B_BINARY)

    def _encode(self, index: int, value: int) -> int:
        pm = 0
        if index == REG_HOURS and not self._cmos[REG_B] & B_24_HOUR:
            pm = HOUR_PM if value >= 12 else 0
            value = value % 12 or 12
        return (value if self._binary() else to_bcd(value)) | pm

    def _decode(self, index: int, raw: int) -> int:
        if index == REG_HOURS and not self._cmos[REG_B] & B_24_HOUR:
            hour = raw & ~HOUR_PM
            hour = (hour if self._binary() else from_bcd(hour)) % 12
            return hour + 12 if raw & HOUR_PM else hour
        return raw if self._binary() else from_bcd(raw)

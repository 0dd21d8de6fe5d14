"""The ACPI fixed-hardware registers the FADT points to, laid out as on Intel's PIIX4.

Port map (the defaults of :class:`PmPorts`; the FADT is built from the same values):

======================  =======  ====  =========================================================
register                port     size  notes
======================  =======  ====  =========================================================
PM1a_EVT_BLK: PM1_STS   0x600    2     write 1 to clear; TMR_STS, PWRBTN_STS, WAK_STS
PM1a_EVT_BLK: PM1_EN    0x602    2     TMR_EN, GBL_EN, PWRBTN_EN
PM1a_CNT_BLK            0x604    2     SCI_EN (set from reset: there is no SMI_CMD), SLP_TYP/SLP_EN
PM_TMR_BLK              0x608    4     24-bit counter at 3.579545 MHz, read-only
GPE0_BLK: GPE0_STS      0xAFE0   2     write 1 to clear
GPE0_BLK: GPE0_EN       0xAFE2   2
Reset register          0xCF9    1     PIIX3 reset control: bit 2 (RST_CPU) resets, 0x06 as QEMU
======================  =======  ====  =========================================================

The PM block (0x600) and GPE0 block (0xAFE0) are QEMU's PIIX4 addresses, so a guest sees
the same ports under pyhv and ``qemu -M pc``. Writing SLP_TYP = :data:`SLP_TYP_S5` with
SLP_EN powers off (the DSDT's ``\\_S5`` package gives the guest that value).

The SCI is level-triggered: it is high while SCI_EN is set and any enabled PM1 or GPE0
status bit is set. TMR_STS (the timer's bit 23 toggled) is computed when a register is
accessed or :meth:`AcpiPm.update_timer_status` is called; nothing wakes up on its own
to raise a timer-overflow SCI (Linux never enables TMR_EN).
"""

from __future__ import annotations

import threading
from typing import Callable, List, NamedTuple, Optional, Tuple

from ..bus import Bus
from ..irq import IrqLine
from ..lifecycle import Lifecycle

PM_TIMER_HZ = 3_579_545
PM_TIMER_BITS = 24
PM_TIMER_MASK = (1 << PM_TIMER_BITS) - 1
NS_PER_SECOND = 1_000_000_000

# Offsets inside the PM block.
PM1_STS_OFFSET = 0
PM1_EN_OFFSET = 2
PM1_CNT_OFFSET = 4
PM_TMR_OFFSET = 8
PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
PM_TMR_LEN = 4
PM_BLOCK_LEN = 12
GPE0_BLK_LEN = 4  # status half then enable half
GPE0_STS_OFFSET = 0
GPE0_EN_OFFSET = 2
RESET_REGISTER_LEN = 1

# PM1 status and enable bits (ACPI 6.4 Tables 4.16, 4.18).
TMR_STS = 1 << 0
BM_STS = 1 << 4
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
SLPBTN_STS = 1 << 9
RTC_STS = 1 << 10
WAK_STS = 1 << 15
TMR_EN = 1 << 0
GBL_EN = 1 << 5
PWRBTN_EN = 1 << 8
SLPBTN_EN = 1 << 9
RTC_EN = 1 << 10
PM1_EN_WRITABLE = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN
# PM1 control bits (Table 4.20).
SCI_EN = 1 << 0
BM_RLD = 1 << 1
GBL_RLS = 1 << 2
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0b111 << SLP_TYP_SHIFT
SLP_EN = 1 << 13
PM1_CNT_STORED = SCI_EN | BM_RLD | SLP_TYP_MASK  # GBL_RLS and SLP_EN are write-only and read 0

SLP_TYP_S5 = 5  # the value \_S5 hands the guest; any other sleep type is refused

# Reset control register (PIIX3 RCR at 0xCF9).
RESET_SYS_RST = 1 << 1  # hard reset rather than a CPU-only reset (latched)
RESET_RST_CPU = 1 << 2  # the transition that resets
RESET_REGISTER_MASK = 0x0E
RESET_VALUE = RESET_SYS_RST | RESET_RST_CPU  # what the FADT tells the guest to write


class PmPorts(NamedTuple):
    """Where the machine attaches the registers, and what the FADT reports."""

    pm_base: int = 0x600
    gpe0_base: int = 0xAFE0
    reset: int = 0xCF9


def ns_to_pm_ticks(ns: int) -> int:
    return ns * PM_TIMER_HZ // NS_PER_SECOND


class AcpiPm:
    """PM1 event, PM1 control and PM timer registers (the PM block), with the GPE0 block and
    the reset register as companion devices: ``pm.gpe0`` and ``pm.reset_register``.

    ``clock_ns`` is a monotonic clock in nanoseconds (``time.monotonic_ns`` in a VM, a fake
    in tests); the timer reads 0 when the device is created.
    """

    def __init__(self, lifecycle: Lifecycle, sci: IrqLine, clock_ns: Callable[[], int]) -> None:
        self._lifecycle = lifecycle
        self._sci = sci
        self._clock_ns = clock_ns
        self._lock = threading.RLock()
        self._epoch_ns = clock_ns()
        self._last_timer_ticks = 0
        self._sci_level = False
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = SCI_EN  # no SMI_CMD in the FADT: the machine is always in ACPI mode
        self.gpe0_sts = 0
        self.gpe0_en = 0
        self.refused_sleep_types: List[int] = []  # SLP_TYP values the guest asked for that pyhv cannot do
        self.gpe0 = _Gpe0Block(self)
        self.reset_register = ResetRegister(lifecycle)

    # --- the timer --------------------------------------------------------------------------------
    def _timer_ticks(self) -> int:
        """Ticks since creation, not masked: bit 23 transitions are counted from it."""
        return ns_to_pm_ticks(self._clock_ns() - self._epoch_ns)

    def timer_value(self) -> int:
        with self._lock:
            ticks = self._timer_ticks()
            self._note_timer(ticks)
            return ticks & PM_TIMER_MASK

    def _note_timer(self, ticks: int) -> None:
        # The status bit is set each time the counter's top bit changes (ACPI 6.4 section 4.8.3.3).
        top_bit = PM_TIMER_BITS - 1
        if ticks >> top_bit != self._last_timer_ticks >> top_bit:
            self.pm1_sts |= TMR_STS
        self._last_timer_ticks = ticks

    def update_timer_status(self) -> None:
        """Bring TMR_STS and the SCI up to date with the clock."""
        with self._lock:
            self._note_timer(self._timer_ticks())
            self._update_sci()

    # --- events from the management side ---------------------------------------------------------
    def press_power_button(self) -> None:
        """A power-button press (QMP system_powerdown, virsh shutdown); safe from any thread."""
        with self._lock:
            self.pm1_sts |= PWRBTN_STS
            self._update_sci()

    def raise_gpe(self, bit: int) -> None:
        """Set GPE0 status ``bit`` (0-15), e.g. for a hot-plug notification."""
        if not 0 <= bit < 8 * (GPE0_BLK_LEN // 2):
            raise ValueError(f"GPE0 has bits 0-{8 * (GPE0_BLK_LEN // 2) - 1}, not {bit}")
        with self._lock:
            self.gpe0_sts |= 1 << bit
            self._update_sci()

    def _update_sci(self) -> None:
        pending = (self.pm1_sts & self.pm1_en) or (self.gpe0_sts & self.gpe0_en)
        level = bool(self.pm1_cnt & SCI_EN) and bool(pending)
        if level != self._sci_level:
            self._sci_level = level
            self._sci.set_level(level)

    # --- the PM block as a bus device --------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            ticks = self._timer_ticks()
            self._note_timer(ticks)
            self._update_sci()
            registers = (self.pm1_sts.to_bytes(2, "little") + self.pm1_en.to_bytes(2, "little")
                         + (self.pm1_cnt & PM1_CNT_STORED).to_bytes(2, "little") + b"\0\0"
                         + (ticks & PM_TIMER_MASK).to_bytes(4, "little"))
            return int.from_bytes(registers[offset:offset + size].ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._note_timer(self._timer_ticks())
            sts_bits = _bits_written(PM1_STS_OFFSET, 2, offset, size, value)
            if sts_bits is not None:
                self.pm1_sts &= ~sts_bits[1]  # write 1 to clear
            en_bits = _bits_written(PM1_EN_OFFSET, 2, offset, size, value)
            if en_bits is not None:
                mask, bits = en_bits
                self.pm1_en = ((self.pm1_en & ~mask) | bits) & PM1_EN_WRITABLE
            cnt_bits = _bits_written(PM1_CNT_OFFSET, 2, offset, size, value)
            if cnt_bits is not None:
                self._write_control(*cnt_bits)
            self._update_sci()

    def _write_control(self, mask: int, bits: int) -> None:
        self.pm1_cnt = ((self.pm1_cnt & ~mask) | bits) & PM1_CNT_STORED
        if bits & SLP_EN:
            sleep_type = (self.pm1_cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT
            if sleep_type == SLP_TYP_S5:
                self._lifecycle.shutdown(0, "ACPI power-off")
            else:
                # Only \_S5 is declared, so a guest asking for another state is confused;
                # it keeps running, as on a chipset that ignores an undefined SLP_TYP.
                self.refused_sleep_types.append(sleep_type)


def _bits_written(reg_offset: int, reg_size: int, offset: int, size: int,
                  value: int) -> Optional[Tuple[int, int]]:
    """(byte mask, value) of the part of register [reg_offset, reg_offset+reg_size) that an
    access of ``size`` bytes at ``offset`` covers, in the register's own bit positions; None
    when the access does not touch it."""
    start = max(reg_offset, offset)
    end = min(reg_offset + reg_size, offset + size)
    if start >= end:
        return None
    mask = 0
    bits = 0
    for byte_addr in range(start, end):
        shift_reg = 8 * (byte_addr - reg_offset)
        mask |= 0xFF << shift_reg
        bits |= ((value >> (8 * (byte_addr - offset))) & 0xFF) << shift_reg
    return mask, bits


class _Gpe0Block:
    """GPE0_STS (write 1 to clear) and GPE0_EN, sharing the PM device's lock and SCI."""

    def __init__(self, pm: AcpiPm) -> None:
        self._pm = pm

    def read(self, offset: int, size: int) -> int:
        pm = self._pm
        with pm._lock:
            registers = pm.gpe0_sts.to_bytes(2, "little") + pm.gpe0_en.to_bytes(2, "little")
            return int.from_bytes(registers[offset:offset + size].ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        pm = self._pm
        with pm._lock:
            sts_bits = _bits_written(GPE0_STS_OFFSET, 2, offset, size, value)
            if sts_bits is not None:
                pm.gpe0_sts &= ~sts_bits[1]
            en_bits = _bits_written(GPE0_EN_OFFSET, 2, offset, size, value)
            if en_bits is not None:
                pm.gpe0_en = (pm.gpe0_en & ~en_bits[0]) | en_bits[1]
            pm._update_sci()


class ResetRegister:
    """The reset control register the FADT's RESET_REG names (PIIX3 RCR at 0xCF9)."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if value & RESET_RST_CPU:
            self._lifecycle.reset("ACPI reset")
        else:
            # Linux's reboot=pci writes SYS_RST alone first, then adds RST_CPU.
            self.value = value & RESET_REGISTER_MASK


def attach_acpi_pm(pio: Bus, pm: AcpiPm, ports: PmPorts = PmPorts()) -> None:
    """Attach the PM block, GPE0 block and reset register to the port-I/O bus ``pio``.

    The reset register's byte at 0xCF9 sits inside the PCI configuration-address dword at
    0xCF8; a PCI host bridge attached later must hand byte accesses at 0xCF9 to it.
    """
    pio.attach(ports.pm_base, PM_BLOCK_LEN, pm)
    pio.attach(ports.gpe0_base, GPE0_BLK_LEN, pm.gpe0)
    pio.attach(ports.reset, RESET_REGISTER_LEN, pm.reset_register)

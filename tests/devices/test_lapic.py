"""The local APIC, driven through xAPIC MMIO and x2APIC MSRs as Linux's apic code does."""

from __future__ import annotations

from typing import List

import pytest

from pyhv.bus import Bus
from pyhv.clock import InstructionClock, TimerQueue, Tsc
from pyhv.devices.apic_bus import ApicBus
from pyhv.devices.lapic import (BASE_BSP, BASE_ENABLE, BASE_X2APIC, LAPIC_BASE, ApicMsrFault,
                                LocalApic)

ID, VERSION, TPR, PPR, EOI, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR, ESR, ICR_LOW, ICR_HIGH = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
LVT_TIMER, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x320, 0x350, 0x360, 0x370
TIMER_INITIAL, TIMER_CURRENT, TIMER_DIVIDE = 0x380, 0x390, 0x3E0
MSR_APIC_BASE, MSR_TSC_DEADLINE = 0x1B, 0x6E0
ONESHOT, PERIODIC, TSC_DEADLINE = 0, 1 << 17, 2 << 17
MASKED = 1 << 16


class EoiLog:
    def __init__(self) -> None:
        self.vectors: List[int] = []

    def eoi(self, vector: int) -> None:
        self.vectors.append(vector)


class Board:
    def __init__(self) -> None:
        self.clock = InstructionClock()
        self.timers = TimerQueue()
        self.tsc = Tsc(self.clock)
        self.apic_bus = ApicBus()
        self.eois = EoiLog()
        self.apic_bus.add_eoi_listener(self.eois)
        self.lapic = LocalApic(0, self.clock, self.timers, self.tsc, self.apic_bus)
        self.mmio = Bus("mmio")
        self.mmio.attach(LAPIC_BASE, 0x1000, self.lapic)

    def read(self, reg: int) -> int:
        return self.mmio.read(LAPIC_BASE + reg, 4)

    def write(self, reg: int, value: int) -> None:
        self.mmio.write(LAPIC_BASE + reg, 4, value)

    def enable(self, spurious: int = 0xFF) -> None:
        self.write(SVR, 0x100 | spurious)

    def run_until(self, ns: int) -> None:
        while self.clock.now < ns:
            self.clock.warp_to(min(ns, self.timers.earliest))
            self.timers.run_expired(self.clock.now)

    def take(self) -> int:
        vector = self.lapic.acknowledge()
        assert vector is not None
        return vector


@pytest.fixture
def board() -> Board:
    return Board()


def test_reset_state(board):
    assert board.lapic.read_msr(MSR_APIC_BASE) == LAPIC_BASE | BASE_ENABLE | BASE_BSP
    assert board.read(VERSION) == 0x50014
    assert board.read(ID) == 0
    assert board.read(SVR) == 0xFF
    assert board.read(DFR) == 0xFFFFFFFF
    assert board.read(LVT_TIMER) == MASKED
    assert board.read(LVT_LINT0) == 0x700  # virtual wire: ExtINT, unmasked
    assert board.read(LVT_LINT1) == MASKED
    assert board.lapic.accepts_extint()


def test_fixed_interrupts_wait_for_software_enable(board):
    board.lapic.receive(0, 0x40, False)
    assert board.read(IRR + 0x20) == 0  # software-disabled: dropped
    board.enable()
    board.lapic.receive(0, 0x40, False)
    assert board.read(IRR + 0x20) == 1
    assert board.lapic.deliverable


def test_highest_vector_first_and_eoi_retires_highest_isr(board):
    board.enable()
    for vector in (0x31, 0x52, 0x45):
        board.lapic.receive(0, vector, False)
    assert board.take() == 0x52
    assert board.read(PPR) == 0x50
    assert not board.lapic.deliverable  # 0x45 and 0x31 are in lower classes than 0x50
    board.lapic.receive(0, 0x61, False)
    assert board.take() == 0x61  # nests
    board.write(EOI, 0)
    assert board.read(ISR + 0x30) == 0 and board.read(ISR + 0x20) == 1 << (0x52 - 0x40)
    board.write(EOI, 0)
    assert board.take() == 0x45
    board.write(EOI, 0)
    assert board.take() == 0x31
    board.write(EOI, 0)
    assert board.lapic.isr == 0 and board.eois.vectors == []  # edge vectors broadcast nothing


def test_same_class_does_not_nest(board):
    board.enable()
    board.lapic.receive(0, 0x58, False)
    assert board.take() == 0x58
    board.lapic.receive(0, 0x5C, False)  # higher vector, same priority class
    assert not board.lapic.deliverable


def test_tpr_masks_priority_classes(board):
    board.enable()
    board.write(TPR, 0x50)
    board.lapic.receive(0, 0x55, False)
    assert not board.lapic.deliverable
    assert board.lapic.acknowledge() is None
    board.write(TPR, 0x40)
    assert board.lapic.deliverable
    assert board.take() == 0x55
    assert board.read(PPR) == 0x50


def test_level_triggered_eoi_is_broadcast(board):
    board.enable()
    board.lapic.receive(0, 0x70, True)
    assert board.read(TMR + 0x30) == 1 << 16
    assert board.take() == 0x70
    board.write(EOI, 0)
    assert board.eois.vectors == [0x70]


def test_spurious_vector_register(board):
    board.enable(spurious=0xEF)
    assert board.read(SVR) == 0x1EF
    assert board.lapic.spurious_vector() == 0xEF


def test_software_disable_masks_every_lvt(board):
    board.enable()
    board.write(LVT_ERROR, 0xFE)
    assert board.read(LVT_ERROR) == 0xFE
    board.write(SVR, 0xFF)
    assert board.read(LVT_ERROR) & MASKED and board.read(LVT_LINT0) & MASKED
    board.write(LVT_ERROR, 0xFE)  # cannot unmask while software-disabled
    assert board.read(LVT_ERROR) & MASKED


def test_illegal_vector_sets_esr_and_signals_lvt_error(board):
    board.enable()
    board.write(LVT_ERROR, 0xFE)
    board.lapic.receive(0, 0x05, False)
    board.write(ESR, 0)  # latch
    assert board.read(ESR) == 0x40
    assert board.take() == 0xFE
    board.write(ESR, 0)
    assert board.read(ESR) == 0


def test_oneshot_timer_with_divider(board):
    board.enable()
    board.write(TIMER_DIVIDE, 0x3)  # divide by 16
    board.write(LVT_TIMER, ONESHOT | 0xEC)
    board.write(TIMER_INITIAL, 1000)
    board.clock.advance_ns(4000)
    assert board.read(TIMER_CURRENT) == 750
    board.run_until(15_999)
    assert not board.lapic.deliverable
    board.run_until(16_000)
    assert board.take() == 0xEC
    assert board.read(TIMER_CURRENT) == 0
    board.write(EOI, 0)
    board.run_until(100_000)
    assert not board.lapic.deliverable  # one-shot


def test_periodic_timer_reloads(board):
    board.enable()
    board.write(TIMER_DIVIDE, 0xB)  # divide by 1
    board.write(LVT_TIMER, PERIODIC | 0xEC)
    board.write(TIMER_INITIAL, 500)
    fired = []
    for end in (500, 1000, 1500):
        board.run_until(end)
        fired.append(board.take())
        board.write(EOI, 0)
    assert fired == [0xEC] * 3
    board.clock.advance_ns(100)
    assert board.read(TIMER_CURRENT) == 400


def test_masked_timer_keeps_counting_without_interrupts(board):
    board.enable()
    board.write(LVT_TIMER, MASKED | PERIODIC | 0xEC)
    board.write(TIMER_INITIAL, 100)
    board.run_until(1000)
    assert not board.lapic.deliverable
    assert 0 < board.read(TIMER_CURRENT) <= 100


def test_tsc_deadline_timer(board):
    board.enable()
    board.write(LVT_TIMER, TSC_DEADLINE | 0xEC)
    board.write(TIMER_INITIAL, 10)  # ignored in TSC-deadline mode
    assert board.read(TIMER_INITIAL) == 0
    board.lapic.write_msr(MSR_TSC_DEADLINE, board.tsc.read() + 5000)
    board.run_until(4999)
    assert not board.lapic.deliverable
    board.run_until(5000)
    assert board.take() == 0xEC
    assert board.lapic.read_msr(MSR_TSC_DEADLINE) == 0  # cleared when it fires


def test_tsc_deadline_msr_ignored_in_other_modes(board):
    board.enable()
    board.write(LVT_TIMER, ONESHOT | 0xEC)
    board.lapic.write_msr(MSR_TSC_DEADLINE, 100)
    assert board.lapic.read_msr(MSR_TSC_DEADLINE) == 0
    board.run_until(1000)
    assert not board.lapic.deliverable


def test_mode_change_stops_the_timer(board):
    board.enable()
    board.write(LVT_TIMER, ONESHOT | 0xEC)
    board.write(TIMER_INITIAL, 100)
    board.write(LVT_TIMER, PERIODIC | 0xEC)
    board.run_until(10_000)
    assert not board.lapic.deliverable


def test_self_ipi_through_icr(board):
    board.enable()
    board.write(ICR_HIGH, 0)
    board.write(ICR_LOW, (1 << 18) | 0x90)  # shorthand self, fixed
    assert board.take() == 0x90


def test_ipi_to_own_physical_id_and_logical_flat(board):
    board.enable()
    board.write(ICR_HIGH, 0 << 24)
    board.write(ICR_LOW, 0x91)
    assert board.take() == 0x91
    board.write(EOI, 0)
    board.write(LDR, 0x01000000)
    board.write(ICR_HIGH, 0x01 << 24)
    board.write(ICR_LOW, (1 << 11) | 0x92)  # logical destination
    assert board.take() == 0x92
    board.write(EOI, 0)
    board.write(ICR_HIGH, 0x02 << 24)
    board.write(ICR_LOW, (1 << 11) | 0x93)  # another logical CPU: not us
    assert not board.lapic.deliverable


def test_nmi_ipi_counts_pending_nmis(board):
    board.enable()
    board.write(ICR_LOW, (1 << 18) | (4 << 8))
    assert board.lapic.nmi_pending == 1


def test_x2apic_msrs(board):
    with pytest.raises(ApicMsrFault, match="0x802"):
        board.lapic.read_msr(0x802)  # not in x2APIC mode yet
    board.lapic.write_msr(MSR_APIC_BASE, LAPIC_BASE | BASE_ENABLE | BASE_X2APIC)
    assert board.lapic.read_msr(MSR_APIC_BASE) & BASE_X2APIC
    assert board.read(VERSION) == 0xFFFFFFFF  # MMIO is off in x2APIC mode
    assert board.lapic.read_msr(0x803) == 0x50014
    assert board.lapic.read_msr(0x802) == 0
    assert board.lapic.read_msr(0x80D) == 1  # LDR derived from the ID
    board.lapic.write_msr(0x80F, 0x1FF)
    board.lapic.write_msr(0x808, 0x20)
    assert board.lapic.read_msr(0x80A) == 0x20
    board.lapic.write_msr(0x83F, 0x99)  # SELF IPI
    assert board.lapic.read_msr(0x820 + 4) == 1 << (0x99 - 0x80)
    assert board.take() == 0x99
    board.lapic.write_msr(0x80B, 0)
    assert board.lapic.isr == 0
    board.lapic.write_msr(0x830, (0 << 32) | 0xA0)  # 64-bit ICR to ID 0
    assert board.lapic.read_msr(0x830) == 0xA0
    assert board.take() == 0xA0


@pytest.mark.parametrize("index, value, problem", [
    (0x80B, 1, "only 0"),  # EOI with a non-zero value
    (0x802, 5, "not writable"),  # ID is read-only
    (0x80D, 5, "not writable"),  # LDR is read-only
    (0x80E, 0, "not writable"),  # no DFR in x2APIC mode
    (0x831, 0, "not writable"),  # no ICR high half
    (0x83F, 0x100, "reserved"),
    (0x8FF, 0, "no such"),
])
def test_x2apic_bad_writes_fault(board, index, value, problem):
    board.lapic.write_msr(MSR_APIC_BASE, LAPIC_BASE | BASE_ENABLE | BASE_X2APIC)
    with pytest.raises(ApicMsrFault, match=problem) as info:
        board.lapic.write_msr(index, value)
    assert f"{index:#x}" in str(info.value)


@pytest.mark.parametrize("index", [0x80B, 0x83F, 0x809, 0x8FF])
def test_x2apic_bad_reads_fault(board, index):
    board.lapic.write_msr(MSR_APIC_BASE, LAPIC_BASE | BASE_ENABLE | BASE_X2APIC)
    with pytest.raises(ApicMsrFault):
        board.lapic.read_msr(index)


def test_apic_base_transitions(board):
    enabled_x2 = LAPIC_BASE | BASE_ENABLE | BASE_X2APIC
    with pytest.raises(ApicMsrFault, match="reserved"):
        board.lapic.write_msr(MSR_APIC_BASE, LAPIC_BASE | BASE_ENABLE | 1)
    with pytest.raises(ApicMsrFault, match="without APIC enable"):
        board.lapic.write_msr(MSR_APIC_BASE, LAPIC_BASE | BASE_X2APIC)
    board.lapic.write_msr(MSR_APIC_BASE, enabled_x2)
    with pytest.raises(ApicMsrFault, match="needs a disable"):
        board.lapic.write_msr(MSR_APIC_BASE, LAPIC_BASE | BASE_ENABLE)
    board.lapic.write_msr(MSR_APIC_BASE, LAPIC_BASE)  # disable
    with pytest.raises(ApicMsrFault, match="xAPIC mode before"):
        board.lapic.write_msr(MSR_APIC_BASE, enabled_x2)
    assert board.lapic.read_msr(MSR_APIC_BASE) == LAPIC_BASE | BASE_BSP  # BSP bit kept


def test_global_disable_loses_state_and_passes_the_pic_through(board):
    board.enable()
    board.write(TPR, 0x30)
    board.lapic.write_msr(MSR_APIC_BASE, LAPIC_BASE)
    assert board.read(TPR) == 0xFFFFFFFF  # MMIO not decoded while disabled
    assert board.lapic.accepts_extint()
    board.lapic.write_msr(MSR_APIC_BASE, LAPIC_BASE | BASE_ENABLE)
    assert board.read(TPR) == 0 and board.read(SVR) == 0xFF
    assert board.read(LVT_LINT0) & MASKED  # after a disable, LINT0 is masked like the rest
    assert not board.lapic.accepts_extint()


def test_lint1_nmi_on_rising_edge(board):
    board.enable()
    board.write(LVT_LINT1, 4 << 8)  # NMI, as Linux sets it
    board.lapic.set_lint(1, True)
    board.lapic.set_lint(1, True)
    board.lapic.set_lint(1, False)
    assert board.lapic.nmi_pending == 1


def test_reserved_mmio_register_sets_illegal_register_error(board):
    board.enable()
    board.read(0x3A0)
    board.write(ESR, 0)
    assert board.read(ESR) & 0x80

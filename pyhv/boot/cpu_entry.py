"""Entry states for the boot vCPU: 64-bit long mode (Linux) and 32-bit protected mode
(multiboot, the Linux 32-bit protocol). The GDT, IDT and page tables they refer to are
written into guest memory here, so a returned state is ready to run.
"""

from __future__ import annotations

from typing import Dict

from ..cpu_state import (CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME,
                         CpuBootState)
from ..memory import GuestMemory
from .gdt import code_segment, data_segment, write_boot_gdt, write_boot_idt
from .layout import BOOT_STACK_TOP
from .pagetables import write_identity_page_tables

RFLAGS_RESERVED = 0x2  # bit 1 always set; IF clear so the guest starts with interrupts off


def _state(memory: GuestMemory, long_mode: bool, rip: int, gprs: Dict[str, int]) -> CpuBootState:
    data = data_segment()
    state = CpuBootState(
        rip=rip,
        rsp=BOOT_STACK_TOP,
        rflags=RFLAGS_RESERVED,
        gprs=dict(gprs),
        cs=code_segment(long_mode),
        ds=data,
        es=data_segment(),
        fs=data_segment(),
        gs=data_segment(),
        ss=data_segment(),
        gdt=write_boot_gdt(memory, long_mode),
        idt=write_boot_idt(memory),
    )
    state.cr0 = CR0_PE | CR0_ET | CR0_NE
    if long_mode:
        state.cr3 = write_identity_page_tables(memory)
        state.cr0 |= CR0_PG
        state.cr4 = CR4_PAE
        state.efer = EFER_LME | EFER_LMA
    return state


def long_mode_entry(memory: GuestMemory, rip: int, zero_page: int) -> CpuBootState:
    """Linux 64-bit boot protocol: paging on with an identity map, RSI = boot_params."""
    return _state(memory, True, rip, {"rsi": zero_page, "rbx": 0, "rbp": 0, "rdi": 0})


def protected_mode_entry(memory: GuestMemory, eip: int, gprs: Dict[str, int]) -> CpuBootState:
    """Flat 32-bit protected mode with paging off."""
    return _state(memory, False, eip, gprs)

"""Exception and interrupt delivery: real-mode IVT, protected-mode and long-mode IDT.

Covers gate checks (type, present, DPL for software interrupts), privilege change with a
stack switch from the TSS, IST stacks in long mode, error codes, CR2, and the escalation
rules: two contributory faults (or a #PF then a contributory fault or #PF) make a #DF, and
a fault while delivering #DF is a triple fault, which ends the run with a shutdown result.
"""

from __future__ import annotations

from typing import Optional

from .faults import CONTRIBUTORY, DF, ERROR_CODE_VECTORS, GP, NP, PF, SS_VEC, TS, GuestFault
from .flags import read_rflags, write_rflags
from .operands import set_stack_pointer
from .segments import load_code_descriptor, set_cs
from .state import AC, CS, IF, NT, RF, RSP, SS, TF, VM, SegmentCache, signed64


class TripleFault(Exception):
    """A fault while delivering #DF: the CPU shuts down (internal to the run loop)."""


def _double_faults(first: int, second: int) -> bool:
    if first in CONTRIBUTORY and second in CONTRIBUTORY:
        return True
    return first == PF and (second in CONTRIBUTORY or second == PF)


def raise_exception(cpu, fault: GuestFault) -> None:
    """Deliver ``fault`` (RIP already points at the right return address)."""
    if fault.vector == PF and fault.cr2 is not None:
        cpu.s.cr2 = fault.cr2
    try:
        # Fault-class exceptions push RFLAGS with RF set (SDM vol. 3, 17.3.1.1), so the
        # handler's iret does not re-trigger an instruction breakpoint on the retry.
        deliver(cpu, fault.vector, fault.error_code, fault.software, external=False,
                fault_class=not fault.trap and not fault.software)
    except GuestFault as second:
        if fault.vector == DF:
            raise TripleFault(f"fault {second.vector} while delivering #DF") from None
        if _double_faults(fault.vector, second.vector):
            try:
                deliver(cpu, DF, 0, False, external=False)
            except GuestFault as third:
                raise TripleFault(f"fault {third.vector} while delivering #DF") from None
        else:
            raise_exception(cpu, second)


def raise_interrupt(cpu, vector: int) -> None:
    """Deliver an external (hardware) interrupt."""
    try:
        deliver(cpu, vector, None, False, external=True)
    except GuestFault as fault:
        raise_exception(cpu, fault)


def deliver(cpu, vector: int, error_code: Optional[int], software: bool, external: bool,
            fault_class: bool = False) -> None:
    s = cpu.s
    cpu.halted = False
    if error_code is None and vector in ERROR_CODE_VECTORS and not software and not external:
        error_code = 0
    if not s.cr0 & 1:
        _deliver_real(cpu, vector)
    elif s.efer & (1 << 10):
        _deliver_long(cpu, vector, error_code, software, external, fault_class)
    else:
        _deliver_protected(cpu, vector, error_code, software, external, fault_class)


def _idt_error(vector: int, external: bool) -> int:
    return (vector << 3) | 2 | (1 if external else 0)


def _deliver_real(cpu, vector: int) -> None:
    from .operands import push
    s = cpu.s
    if vector * 4 + 3 > s.idtr_limit:
        raise GuestFault(GP, 0)
    entry = cpu.mmu.read(s.idtr_base + vector * 4, 4)
    flags = read_rflags(s)
    push(cpu, 2, flags)
    push(cpu, 2, s.segs[CS].selector)
    push(cpu, 2, s.rip)
    write_rflags(s, flags & ~(IF | TF | AC))
    selector = entry >> 16
    cs = s.segs[CS]
    s.segs[CS] = SegmentCache(selector, selector << 4, cs.limit, cs.type, cs.s, cs.dpl,
                              cs.present, cs.db, cs.l, cs.g)
    s.rip = entry & 0xFFFF
    cpu.update_mode()


def _read_gate(cpu, vector: int, size: int, external: bool) -> int:
    s = cpu.s
    if vector * size + size - 1 > s.idtr_limit:
        raise GuestFault(GP, _idt_error(vector, external))
    return cpu.mmu.read_system(s.idtr_base + vector * size, size)


def _check_gate(cpu, gate: int, vector: int, software: bool, external: bool, types) -> int:
    gate_type = (gate >> 40) & 0xF
    if gate_type not in types:
        raise GuestFault(GP, _idt_error(vector, external))
    if software and ((gate >> 45) & 3) < cpu.s.cpl:
        raise GuestFault(GP, _idt_error(vector, external))
    if not (gate >> 47) & 1:
        raise GuestFault(NP, _idt_error(vector, external))
    return gate_type


def _deliver_long(cpu, vector: int, error_code: Optional[int], software: bool, external: bool,
                  fault_class: bool = False) -> None:
    s = cpu.s
    gate = _read_gate(cpu, vector, 16, external)
    gate_type = _check_gate(cpu, gate, vector, software, external, (0xE, 0xF))
    low = gate & 0xFFFF_FFFF_FFFF_FFFF
    high = gate >> 64
    offset = (low & 0xFFFF) | ((low >> 32) & 0xFFFF_0000) | ((high & 0xFFFF_FFFF) << 32)
    selector = (low >> 16) & 0xFFFF
    ist = (low >> 32) & 7
    code = load_code_descriptor(cpu, selector)
    if not code.l or code.db:
        raise GuestFault(GP, selector & 0xFFFC)
    new_cpl = s.cpl if code.type & 4 else code.dpl
    if new_cpl > s.cpl:
        raise GuestFault(GP, selector & 0xFFFC)
    old_ss = s.segs[SS].selector
    old_rsp = s.regs[RSP]
    old_flags = read_rflags(s)
    old_cs = s.segs[CS].selector
    if ist:
        new_rsp = cpu.mmu.read_system(s.tr.base + 0x24 + 8 * (ist - 1), 8)
    elif new_cpl < s.cpl:
        new_rsp = cpu.mmu.read_system(s.tr.base + 4 + 8 * new_cpl, 8)
    else:
        new_rsp = old_rsp
    new_rsp &= ~0xF
    frame = [old_ss, old_rsp, old_flags | RF if fault_class else old_flags, old_cs, s.rip]
    if error_code is not None:
        frame.append(error_code)
    # Write the whole frame before changing any state, so a fault here leaves it intact.
    for k, value in enumerate(frame):
        cpu.mmu.write_system(signed64(new_rsp - 8 * (k + 1)), 8, value)
    if new_cpl < s.cpl:
        s.segs[SS] = SegmentCache(new_cpl, 0, 0, 0, 1, new_cpl, 0)
    s.regs[RSP] = signed64(new_rsp - 8 * len(frame))
    set_cs(cpu, code, new_cpl)
    s.rip = offset
    flags = old_flags & ~(TF | NT | RF | VM)
    if gate_type == 0xE:
        flags &= ~IF
    write_rflags(s, flags)


def _deliver_protected(cpu, vector: int, error_code: Optional[int], software: bool,
                       external: bool, fault_class: bool = False) -> None:
    s = cpu.s
    gate = _read_gate(cpu, vector, 8, external)
    gate_type = _check_gate(cpu, gate, vector, software, external, (0x6, 0x7, 0xE, 0xF))
    offset = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF_0000)
    selector = (gate >> 16) & 0xFFFF
    width = 4 if gate_type & 8 else 2
    if width == 2:
        offset &= 0xFFFF
    code = load_code_descriptor(cpu, selector)
    new_cpl = s.cpl if code.type & 4 else code.dpl
    if new_cpl > s.cpl:
        raise GuestFault(GP, selector & 0xFFFC)
    old_flags = read_rflags(s)
    frame = []
    if new_cpl < s.cpl:
        tss_width = 4 if s.tr.type & 8 else 2
        slot = s.tr.base + (4 + 8 * new_cpl if tss_width == 4 else 2 + 4 * new_cpl)
        if slot + 2 * tss_width - 1 > s.tr.base + s.tr.limit:
            raise GuestFault(TS, s.tr.selector & 0xFFFC)
        new_sp = cpu.mmu.read_system(slot, tss_width)
        new_ss_sel = cpu.mmu.read_system(slot + tss_width, 2)
        from .segments import cache_from_descriptor, read_descriptor
        ss_cache = cache_from_descriptor(new_ss_sel, read_descriptor(cpu, new_ss_sel, TS))
        if (new_ss_sel & 3) != new_cpl or ss_cache.dpl != new_cpl or ss_cache.type & 8 \
                or not ss_cache.type & 2:
            raise GuestFault(TS, new_ss_sel & 0xFFFC)
        if not ss_cache.present:
            raise GuestFault(SS_VEC, new_ss_sel & 0xFFFC)
        frame += [s.segs[SS].selector, s.regs[RSP] & 0xFFFF_FFFF]
        stack_base = ss_cache.base
        sp_mask = 0xFFFF_FFFF if ss_cache.db else 0xFFFF
    else:
        ss_cache = None
        new_sp = s.regs[RSP]
        stack_base = s.segs[SS].base
        sp_mask = cpu.stack_mask
    frame += [old_flags | RF if fault_class else old_flags, s.segs[CS].selector, s.rip]
    if error_code is not None:
        frame.append(error_code)
    for k, value in enumerate(frame):
        sp = (new_sp - width * (k + 1)) & sp_mask
        cpu.mmu.write_system(stack_base + sp, width, value)
    sp = (new_sp - width * len(frame)) & sp_mask
    if ss_cache is not None:
        s.segs[SS] = ss_cache
    set_stack_pointer(s, sp_mask, sp)
    set_cs(cpu, code, new_cpl)
    s.rip = offset
    flags = old_flags & ~(TF | NT | RF | VM)
    if gate_type & 1 == 0:
        flags &= ~IF
    write_rflags(s, flags)

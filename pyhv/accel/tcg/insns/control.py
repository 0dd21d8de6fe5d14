"""Control transfer: jmp/jcc/call/ret (near and far), loop/jcxz, int n/int3/into, iret."""

from __future__ import annotations

from ..decoder import D64, END, I64, IMM_B, IMM_FAR, IMM_REL8, IMM_RELZ, IMM_W, MEM_ONLY, Insn, register
from ..faults import BP, GP, OF_VEC, GuestFault
from ..flags import condition, get_of, read_rflags, write_rflags
from ..operands import MASK, STACK_MASK_64, ea, get_reg, pop, pop_q, push, set_reg, set_stack_pointer
from ..segments import cache_from_descriptor, load_code_descriptor, read_descriptor, set_cs
from ..state import CS, IF, IOPL, NT, RCX, RF, RSP, SS, VIF, VIP, VM, SegmentCache, signed64


def _ip_target(cpu, size: int, target: int) -> int:
    """RIP after a near jump to ``target`` with a ``size``-byte operand. In 64-bit code (but
    for a 16-bit operand) that is the register form: a machine integer on PyPy, where
    masking with 2**64-1 would give a long for every address (see .state)."""
    if cpu.bits == 64 and size != 2:
        return signed64(target)
    return target & MASK[size]


def _far_ip(cpu, size: int, offset: int) -> int:
    """RIP after a far transfer to ``offset``, in the mode the new CS set."""
    return signed64(offset) if cpu.bits == 64 else offset & MASK[size]


def jmp_rel(cpu, i: Insn) -> None:
    cpu.s.rip = i.imm


def jcc(cpu, i: Insn) -> None:
    if condition(cpu.s, i.op & 0xF):
        cpu.s.rip = i.imm


def call_rel(cpu, i: Insn) -> None:
    push(cpu, i.opsize, i.next_rip)
    cpu.s.rip = i.imm


def _rm_target(cpu, i: Insn) -> int:
    size = i.opsize
    if i.is_mem:
        return cpu.mmu.read(ea(cpu, i), size)
    return get_reg(cpu.s.regs, i.rm, size)


def jmp_rm(cpu, i: Insn) -> None:
    cpu.s.rip = _ip_target(cpu, i.opsize, _rm_target(cpu, i))


def call_rm(cpu, i: Insn) -> None:
    target = _rm_target(cpu, i)
    push(cpu, i.opsize, i.next_rip)
    cpu.s.rip = _ip_target(cpu, i.opsize, target)


def ret_near(cpu, i: Insn) -> None:
    s = cpu.s
    if i.opsize == 8 and cpu.stack_mask == STACK_MASK_64:
        # 64-bit code: the return address stays in the register form (RIP's, see .state).
        s.rip = pop_q(cpu)
        if i.op == 0xC2:
            s.regs[RSP] = signed64(s.regs[RSP] + i.imm)
        return
    target = pop(cpu, i.opsize)
    if i.op == 0xC2:
        smask = cpu.stack_mask
        set_stack_pointer(s, smask, (s.regs[RSP] + i.imm) & smask)
    s.rip = _ip_target(cpu, i.opsize, target)


def loop(cpu, i: Insn) -> None:
    s = cpu.s
    regs = s.regs
    size = i.adsize
    if i.op == 0xE3:  # jcxz / jecxz / jrcxz
        taken = get_reg(regs, RCX, size) == 0
    else:
        count = (get_reg(regs, RCX, size) - 1) & MASK[size]
        set_reg(regs, RCX, size, count)
        taken = count != 0
        if i.op == 0xE1:
            taken = taken and condition(s, 4)
        elif i.op == 0xE0:
            taken = taken and condition(s, 5)
    if taken:
        s.rip = i.imm


# --- far transfers ---------------------------------------------------------------------
def _far_jump_to(cpu, selector: int, offset: int, size: int) -> None:
    s = cpu.s
    if not s.cr0 & 1 or s.rflags & VM:
        cs = s.segs[CS]
        s.segs[CS] = SegmentCache(selector, selector << 4, cs.limit, cs.type, cs.s, cs.dpl,
                                  cs.present, cs.db, cs.l, cs.g)
        s.rip = offset & MASK[size]
        cpu.update_mode()
        return
    code = load_code_descriptor(cpu, selector)
    rpl = selector & 3
    if code.type & 4:
        if code.dpl > s.cpl:
            raise GuestFault(GP, selector & 0xFFFC)
    elif rpl > s.cpl or code.dpl != s.cpl:
        raise GuestFault(GP, selector & 0xFFFC)
    set_cs(cpu, code, s.cpl)
    s.rip = _far_ip(cpu, size, offset)


def jmp_far_ptr(cpu, i: Insn) -> None:
    _far_jump_to(cpu, i.imm2, i.imm, i.opsize)


def jmp_far_mem(cpu, i: Insn) -> None:
    addr = ea(cpu, i)
    offset = cpu.mmu.read(addr, i.opsize)
    selector = cpu.mmu.read(addr + i.opsize, 2)
    _far_jump_to(cpu, selector, offset, i.opsize)


def _far_call(cpu, i: Insn, selector: int, offset: int) -> None:
    s = cpu.s
    size = i.opsize
    old_cs = s.segs[CS].selector
    old_rsp = s.regs[RSP]
    if s.cr0 & 1 and not s.rflags & VM:
        code = load_code_descriptor(cpu, selector)
        if code.type & 4:
            if code.dpl > s.cpl:
                raise GuestFault(GP, selector & 0xFFFC)
        elif (selector & 3) > s.cpl or code.dpl != s.cpl:
            raise GuestFault(GP, selector & 0xFFFC)
    try:
        push(cpu, size, old_cs)
        push(cpu, size, i.next_rip)
    except GuestFault:
        s.regs[RSP] = old_rsp
        raise
    _far_jump_to(cpu, selector, offset, size)


def call_far_ptr(cpu, i: Insn) -> None:
    _far_call(cpu, i, i.imm2, i.imm)


def call_far_mem(cpu, i: Insn) -> None:
    addr = ea(cpu, i)
    offset = cpu.mmu.read(addr, i.opsize)
    selector = cpu.mmu.read(addr + i.opsize, 2)
    _far_call(cpu, i, selector, offset)


def ret_far(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    old_rsp = s.regs[RSP]
    offset = pop(cpu, size)
    selector = pop(cpu, size) & 0xFFFF
    smask = cpu.stack_mask
    if i.op == 0xCA:
        set_stack_pointer(s, smask, (s.regs[RSP] + i.imm) & smask)
    if not s.cr0 & 1 or s.rflags & VM:
        _far_jump_to(cpu, selector, offset, size)
        return
    rpl = selector & 3
    if rpl < s.cpl:
        s.regs[RSP] = old_rsp
        raise GuestFault(GP, selector & 0xFFFC)
    try:
        code = load_code_descriptor(cpu, selector)
    except GuestFault:
        s.regs[RSP] = old_rsp
        raise
    if rpl == s.cpl:
        set_cs(cpu, code, rpl)
        s.rip = _far_ip(cpu, size, offset)
        return
    # Return to an outer privilege level: SS:RSP follow on the stack.
    new_rsp = pop(cpu, size)
    new_ss = pop(cpu, size) & 0xFFFF
    _return_outer(cpu, code, rpl, offset, new_ss, new_rsp, size)


def _return_outer(cpu, code: SegmentCache, rpl: int, offset: int, new_ss: int, new_rsp: int,
                  size: int) -> None:
    s = cpu.s
    if new_ss & 0xFFFC == 0:
        if not (s.efer & (1 << 10) and code.l and rpl != 3):
            raise GuestFault(GP, 0)
        ss_cache = SegmentCache(new_ss, 0, 0, 0, 1, rpl, 0)
    else:
        ss_cache = cache_from_descriptor(new_ss, read_descriptor(cpu, new_ss))
        if (new_ss & 3) != rpl or ss_cache.dpl != rpl or ss_cache.type & 8 or not ss_cache.type & 2:
            raise GuestFault(GP, new_ss & 0xFFFC)
    s.segs[SS] = ss_cache
    set_cs(cpu, code, rpl)
    s.regs[RSP] = signed64(new_rsp & (MASK[8] if cpu.bits == 64 else MASK[size]))
    s.rip = _far_ip(cpu, size, offset)
    # Data segments the outer level may not use become null.
    for seg in (0, 3, 4, 5):
        cache = s.segs[seg]
        if cache.selector & 0xFFFC and cache.dpl < rpl and not (cache.type & 8 and cache.type & 4):
            s.segs[seg] = SegmentCache(0, 0, 0, 0, 1, 0, 0)


# --- software interrupts and iret --------------------------------------------------------
def int_n(cpu, i: Insn) -> None:
    raise GuestFault(i.imm, trap=True, software=True)


def int3(cpu, i: Insn) -> None:
    raise GuestFault(BP, trap=True, software=True)


def into(cpu, i: Insn) -> None:
    if get_of(cpu.s):
        raise GuestFault(OF_VEC, trap=True, software=True)


def iret(cpu, i: Insn) -> None:
    s = cpu.s
    size = i.opsize
    old_rsp = s.regs[RSP]
    try:
        _iret(cpu, size)
    except GuestFault:
        s.regs[RSP] = old_rsp
        raise


def _iret(cpu, size: int) -> None:
    s = cpu.s
    offset = pop(cpu, size)
    selector = pop(cpu, size) & 0xFFFF
    flags = pop(cpu, size)
    current = read_rflags(s)
    if not s.cr0 & 1:
        mask = 0xFFFF if size == 2 else (0x257FD5 & ~(VIP | VIF | VM))
        _far_jump_to(cpu, selector, offset, size)
        write_rflags(s, (current & ~mask) | (flags & mask))
        return
    if current & NT and not s.efer & (1 << 10):
        raise GuestFault(GP, 0)  # task return: no task switching
    if size == 2:
        flags = (current & ~0xFFFF) | (flags & 0xFFFF)
    rpl = selector & 3
    if rpl < s.cpl:
        raise GuestFault(GP, selector & 0xFFFC)
    code = load_code_descriptor(cpu, selector)
    if not code.type & 4 and code.dpl != rpl:
        raise GuestFault(GP, selector & 0xFFFC)
    changeable = 0x3F7FD5 & ~(VIP | VIF | VM | IOPL | IF)  # arithmetic, TF, DF, NT, RF, AC, ID
    changeable |= VIF | VIP if s.cpl == 0 else 0
    if s.cpl == 0:
        changeable |= IOPL | IF
    elif s.cpl <= (current & IOPL) >> 12:
        changeable |= IF
    new_flags = (current & ~changeable) | (flags & changeable)
    long_return = cpu.bits == 64
    if rpl > s.cpl or long_return:
        new_rsp = pop(cpu, size)
        new_ss = pop(cpu, size) & 0xFFFF
        if rpl == s.cpl and long_return and code.l:
            # 64-bit iret to the same level still loads SS:RSP.
            if new_ss & 0xFFFC:
                ss_cache = cache_from_descriptor(new_ss, read_descriptor(cpu, new_ss))
            else:
                ss_cache = SegmentCache(new_ss, 0, 0, 0, 1, rpl, 0)
            s.segs[SS] = ss_cache
            set_cs(cpu, code, rpl)
            s.regs[RSP] = signed64(new_rsp)
            s.rip = offset
        else:
            _return_outer(cpu, code, rpl, offset, new_ss, new_rsp, size)
    else:
        set_cs(cpu, code, rpl)
        s.rip = offset & MASK[size]
    write_rflags(s, new_flags & ~RF)
    cpu.break_block = True


def _register() -> None:
    register(0xEB, jmp_rel, imm=IMM_REL8, flags=D64 | END)
    register(0xE9, jmp_rel, imm=IMM_RELZ, flags=D64 | END)
    register(0xE8, call_rel, imm=IMM_RELZ, flags=D64 | END)
    for cc in range(16):
        register(0x70 + cc, jcc, imm=IMM_REL8, flags=D64 | END)
        register(0x180 + cc, jcc, imm=IMM_RELZ, flags=D64 | END)
    register(0xC3, ret_near, flags=D64 | END)
    register(0xC2, ret_near, imm=IMM_W, flags=D64 | END)
    register(0xFF, call_rm, flags=D64 | END, reg=2)
    register(0xFF, call_far_mem, flags=MEM_ONLY | END, reg=3)
    register(0xFF, jmp_rm, flags=D64 | END, reg=4)
    register(0xFF, jmp_far_mem, flags=MEM_ONLY | END, reg=5)
    register(0xEA, jmp_far_ptr, imm=IMM_FAR, flags=I64 | END)
    register(0x9A, call_far_ptr, imm=IMM_FAR, flags=I64 | END)
    register(0xCB, ret_far, flags=END)
    register(0xCA, ret_far, imm=IMM_W, flags=END)
    for op in (0xE0, 0xE1, 0xE2, 0xE3):
        register(op, loop, imm=IMM_REL8, flags=D64 | END)
    register(0xCD, int_n, imm=IMM_B, flags=END)
    register(0xCC, int3, flags=END)
    register(0xCE, into, flags=I64 | END)
    register(0xCF, iret, flags=END)


_register()

"""x87 floating-point instructions: the D8-DF escape opcodes, FWAIT and EMMS.

Each escape opcode has one handler. Memory forms dispatch on the ModRM ``reg`` field;
register forms (mod 3) on ``reg`` for the ST(i) families and on the whole ModRM byte for the
others (FNINIT, FLD1, FSIN …). The model itself lives in :mod:`.x87_arith`.
"""

from __future__ import annotations

import math
from typing import Callable, Dict

from ..decoder import Insn, register
from ..faults import MF, NM, UD, GuestFault
from ..flags import get_cf, get_pf, get_zf
from ..fpu import (F80_EXP_MAX, F80_INDEFINITE, F80_INTEGER_BIT, FSW_C0, FSW_C1, FSW_C2, FSW_C3,
                   FSW_B, FSW_ES, FSW_EXCEPTIONS, FSW_IE, FSW_SF, FSW_ZE, MASK64, X87State, f80_is_nan,
                   f80_round_to_float, f80_to_float, float_to_f80)
from ..operands import ea, set_reg
from ..state import RAX
from .x87_arith import (COM, COMP, CONSTANTS, CR0_MP, CR0_TS, SIGN80, SUB, Unmasked, arith, compare,
                        compare_to_eflags, enter, fnsave, frstor, load_bcd, load_env, load_int,
                        load_real, pop, push, raise_flags, record, rounding, set_cc, st_get, st_set,
                        store_bcd, store_env, store_int, store_real)

# Memory operand of the arithmetic escapes: (integer?, size).
_ARITH_MEMORY = {0xD8: (False, 4), 0xDA: (True, 4), 0xDC: (False, 8), 0xDE: (True, 2)}


def _modrm(i: Insn) -> int:
    return (i.mod << 6) | (i.raw_reg << 3) | (i.rm & 7)


def _arith_to(x87: X87State, op: int, dest: int, a: int, b: int, pops: int) -> None:
    """ST(dest) = a op b (or a comparison of a with b), then pop ``pops`` times."""
    if op == COM or op == COMP:
        set_cc(x87, compare(x87, a, b, quiet=False))
    else:
        st_set(x87, dest, arith(x87, op, a, b))
    for _ in range(pops):
        pop(x87)


# --- memory forms -----------------------------------------------------------------------------
def _memory_arith(cpu, x87: X87State, i: Insn, addr: int) -> None:
    integer, size = _ARITH_MEMORY[i.op]
    operand = load_int(cpu, addr, size) if integer else load_real(cpu, addr, size)
    op = i.raw_reg
    _arith_to(x87, op, 0, st_get(x87, 0), operand, 1 if op == COMP else 0)


def _memory_d9(cpu, x87: X87State, i: Insn, addr: int) -> None:
    reg = i.raw_reg
    if reg == 0:
        push(x87, load_real(cpu, addr, 4))
    elif reg == 2 or reg == 3:
        store_real(cpu, x87, addr, 4, st_get(x87, 0))
        if reg == 3:
            pop(x87)
    else:
        raise GuestFault(UD)


def _memory_db(cpu, x87: X87State, i: Insn, addr: int) -> None:
    reg = i.raw_reg
    if reg == 0:
        push(x87, load_int(cpu, addr, 4))
    elif reg == 2 or reg == 3:
        store_int(cpu, x87, addr, 4, st_get(x87, 0))
        if reg == 3:
            pop(x87)
    elif reg == 5:
        push(x87, load_real(cpu, addr, 10))
    elif reg == 7:
        store_real(cpu, x87, addr, 10, st_get(x87, 0))
        pop(x87)
    else:
        raise GuestFault(UD)  # fisttp is SSE3, not advertised


def _memory_dd(cpu, x87: X87State, i: Insn, addr: int) -> None:
    reg = i.raw_reg
    if reg == 0:
        push(x87, load_real(cpu, addr, 8))
    elif reg == 2 or reg == 3:
        store_real(cpu, x87, addr, 8, st_get(x87, 0))
        if reg == 3:
            pop(x87)
    else:
        raise GuestFault(UD)


def _memory_df(cpu, x87: X87State, i: Insn, addr: int) -> None:
    reg = i.raw_reg
    if reg == 0:
        push(x87, load_int(cpu, addr, 2))
    elif reg == 2 or reg == 3:
        store_int(cpu, x87, addr, 2, st_get(x87, 0))
        if reg == 3:
            pop(x87)
    elif reg == 4:
        push(x87, load_bcd(cpu, addr))
    elif reg == 5:
        push(x87, load_int(cpu, addr, 8))
    elif reg == 6:
        store_bcd(cpu, x87, addr, st_get(x87, 0))
        pop(x87)
    elif reg == 7:
        store_int(cpu, x87, addr, 8, st_get(x87, 0))
        pop(x87)
    else:
        raise GuestFault(UD)


_MEMORY: Dict[int, Callable] = {0xD8: _memory_arith, 0xD9: _memory_d9, 0xDA: _memory_arith,
                                0xDB: _memory_db, 0xDC: _memory_arith, 0xDD: _memory_dd,
                                0xDE: _memory_arith, 0xDF: _memory_df}


def _memory_control(cpu, i: Insn, addr: int) -> bool:
    """The control instructions with a memory operand; False when ``i`` is not one."""
    op, reg = i.op, i.raw_reg
    if op == 0xD9 and reg >= 4:
        if reg == 7:  # fnstcw
            cpu.mmu.write(addr, 2, enter(cpu, waiting=False).fcw)
        elif reg == 5:  # fldcw
            x87 = enter(cpu)
            x87.fcw = cpu.mmu.read(addr, 2)
            x87.update_summary()
        elif reg == 6:  # fnstenv: the environment, then every exception masked
            x87 = enter(cpu, waiting=False)
            store_env(cpu, x87, addr, i.opsize)
            x87.fcw |= 0x3F
            x87.update_summary()
        else:  # fldenv
            load_env(cpu, enter(cpu), addr, i.opsize)
        return True
    if op == 0xDD and reg >= 4:
        if reg == 7:  # fnstsw m16
            cpu.mmu.write(addr, 2, enter(cpu, waiting=False).status_word)
        elif reg == 6:
            fnsave(cpu, enter(cpu, waiting=False), addr, i.opsize)
        elif reg == 4:
            frstor(cpu, enter(cpu), addr, i.opsize)
        else:
            raise GuestFault(UD)
        return True
    return False


# --- register forms ---------------------------------------------------------------------------
def _fxam(x87: X87State) -> None:
    raw = x87.st[x87.top]
    cc = FSW_C1 if raw & SIGN80 else 0
    exponent = (raw >> 64) & F80_EXP_MAX
    mantissa = raw & MASK64
    if not x87.tags >> x87.top & 1:
        cc |= FSW_C3 | FSW_C0
    elif exponent == F80_EXP_MAX:
        cc |= FSW_C0 if mantissa & (MASK64 >> 1) else FSW_C2 | FSW_C0
    elif exponent == 0:
        cc |= FSW_C3 if mantissa == 0 else FSW_C3 | FSW_C2
    elif mantissa & F80_INTEGER_BIT:
        cc |= FSW_C2
    set_cc(x87, cc)


def _unary(x87: X87State, fn: Callable[[float], float]) -> None:
    """ST(0) = fn(ST(0)) on the float model; a domain error is an invalid operation."""
    raw = st_get(x87, 0)
    if f80_is_nan(raw):
        return
    try:
        result = fn(f80_to_float(raw))
    except (ValueError, OverflowError):
        raise_flags(x87, FSW_IE)
        result = math.nan
    st_set(x87, 0, F80_INDEFINITE if math.isnan(result) else float_to_f80(result))


def _binary_pop(x87: X87State, fn: Callable[[float, float], float]) -> None:
    """ST(1) = fn(ST(0), ST(1)), then pop (FPATAN, FYL2X, FYL2XP1)."""
    a, b = st_get(x87, 0), st_get(x87, 1)
    try:
        result = fn(f80_to_float(a), f80_to_float(b))
    except ZeroDivisionError:
        raise_flags(x87, FSW_ZE)
        result = -math.inf
    except (ValueError, OverflowError):
        raise_flags(x87, FSW_IE)
        result = math.nan
    st_set(x87, 1, F80_INDEFINITE if math.isnan(result) else float_to_f80(result))
    pop(x87)


def _log2(value: float) -> float:
    if value == 0.0:
        raise ZeroDivisionError
    return math.log2(value)


def _partial_remainder(x87: X87State, nearest: bool) -> None:
    """FPREM/FPREM1 in one step (C2 = 0): the quotient's low bits go to C0, C3, C1."""
    a, b = f80_to_float(st_get(x87, 0)), f80_to_float(st_get(x87, 1))
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or b == 0.0:
        raise_flags(x87, FSW_IE)
        st_set(x87, 0, F80_INDEFINITE)
        return
    quotient = a / b
    q = int(round(quotient)) if nearest else int(quotient)
    result = math.remainder(a, b) if nearest else math.fmod(a, b)
    q = abs(q)
    cc = (FSW_C0 if q & 4 else 0) | (FSW_C3 if q & 2 else 0) | (FSW_C1 if q & 1 else 0)
    set_cc(x87, cc)
    st_set(x87, 0, float_to_f80(result))


def _fxtract(x87: X87State) -> None:
    raw = st_get(x87, 0)
    value = f80_to_float(raw)
    if value == 0.0:
        raise_flags(x87, FSW_ZE)
        st_set(x87, 0, float_to_f80(-math.inf))
        push(x87, raw)
        return
    exponent = ((raw >> 64) & F80_EXP_MAX) - 16383
    st_set(x87, 0, float_to_f80(float(exponent)))
    push(x87, (raw & (SIGN80 | MASK64)) | (16383 << 64))


def _fscale(x87: X87State) -> None:
    a, b = f80_to_float(st_get(x87, 0)), f80_to_float(st_get(x87, 1))
    if math.isnan(a) or math.isnan(b):
        st_set(x87, 0, F80_INDEFINITE)
        return
    if math.isinf(b):
        result = a * math.inf if b > 0 else a * 0.0
    else:
        try:
            result = math.ldexp(a, int(b))
        except OverflowError:
            result = math.copysign(math.inf, a)
    st_set(x87, 0, float_to_f80(result))


def _fsincos(x87: X87State) -> None:
    value = f80_to_float(st_get(x87, 0))
    if math.isinf(value):
        raise_flags(x87, FSW_IE)
        st_set(x87, 0, F80_INDEFINITE)
        return
    st_set(x87, 0, float_to_f80(math.sin(value)))
    push(x87, float_to_f80(math.cos(value)))


def _fptan(x87: X87State) -> None:
    _unary(x87, math.tan)
    push(x87, float_to_f80(1.0))


def _fcmov_condition(cpu, op: int, reg: int) -> bool:
    s = cpu.s
    kind = reg & 3
    if kind == 0:
        taken = get_cf(s)
    elif kind == 1:
        taken = get_zf(s)
    elif kind == 2:
        taken = get_cf(s) or get_zf(s)
    else:
        taken = get_pf(s)
    return bool(taken) != (op == 0xDB)


def _fcomi(cpu, x87: X87State, n: int, quiet: bool, pops: int) -> None:
    compare_to_eflags(cpu, compare(x87, st_get(x87, 0), st_get(x87, n), quiet))
    for _ in range(pops):
        pop(x87)


_D9_SPECIAL: Dict[int, Callable[[X87State], None]] = {
    0xD0: lambda x87: None,  # fnop
    0xE0: lambda x87: st_set(x87, 0, st_get(x87, 0) ^ SIGN80),  # fchs
    0xE1: lambda x87: st_set(x87, 0, st_get(x87, 0) & ~SIGN80),  # fabs
    0xE4: lambda x87: set_cc(x87, compare(x87, st_get(x87, 0), 0, quiet=False)),  # ftst
    0xE5: _fxam,
    0xF0: lambda x87: _unary(x87, lambda v: 2.0 ** v - 1.0),  # f2xm1
    0xF1: lambda x87: _binary_pop(x87, lambda a, b: b * _log2(a)),  # fyl2x
    0xF2: _fptan,
    0xF3: lambda x87: _binary_pop(x87, lambda a, b: math.atan2(b, a)),  # fpatan
    0xF4: _fxtract,
    0xF5: lambda x87: _partial_remainder(x87, nearest=True),  # fprem1
    0xF6: lambda x87: setattr(x87, "top", (x87.top - 1) & 7),  # fdecstp
    0xF7: lambda x87: setattr(x87, "top", (x87.top + 1) & 7),  # fincstp
    0xF8: lambda x87: _partial_remainder(x87, nearest=False),  # fprem
    0xF9: lambda x87: _binary_pop(x87, lambda a, b: b * _log2(a + 1.0)),  # fyl2xp1
    0xFA: lambda x87: _unary(x87, math.sqrt),
    0xFB: _fsincos,
    0xFC: lambda x87: st_set(x87, 0, float_to_f80(f80_round_to_float(st_get(x87, 0), rounding(x87)))
                             if not f80_is_nan(st_get(x87, 0)) else st_get(x87, 0)),  # frndint
    0xFD: _fscale,
    0xFE: lambda x87: _unary(x87, math.sin),
    0xFF: lambda x87: _unary(x87, math.cos),
}


def _register_form(cpu, x87: X87State, op: int, modrm: int) -> None:
    reg, n = (modrm >> 3) & 7, modrm & 7
    if op == 0xD8:
        _arith_to(x87, reg, 0, st_get(x87, 0), st_get(x87, n), 1 if reg == COMP else 0)
    elif op == 0xDC or op == 0xDE:
        # ST(i) = ST(i) op ST(0); the SUB/SUBR and DIV/DIVR encodings swap against D8.
        pops = 1 if op == 0xDE else 0
        if reg in (COM, COMP):
            if op == 0xDE and modrm != 0xD9:
                raise GuestFault(UD)
            pops = 2 if op == 0xDE else (1 if reg == COMP else 0)
            _arith_to(x87, reg, 0, st_get(x87, 0), st_get(x87, n), pops)
        else:
            op_for_sti = reg ^ 1 if reg >= SUB else reg
            _arith_to(x87, op_for_sti, n, st_get(x87, n), st_get(x87, 0), pops)
    elif op == 0xD9:
        if reg == 0:
            push(x87, st_get(x87, n))
        elif reg == 1:  # fxch
            a, b = st_get(x87, 0), st_get(x87, n)
            st_set(x87, 0, b)
            st_set(x87, n, a)
            x87.fsw &= ~FSW_C1
        elif modrm in CONSTANTS:
            push(x87, CONSTANTS[modrm])
        elif modrm in _D9_SPECIAL:
            _D9_SPECIAL[modrm](x87)
        else:
            raise GuestFault(UD)
    elif op == 0xDA or (op == 0xDB and reg < 4):
        if modrm == 0xE9:  # fucompp
            set_cc(x87, compare(x87, st_get(x87, 0), st_get(x87, 1), quiet=True))
            pop(x87)
            pop(x87)
        elif reg < 4:
            if _fcmov_condition(cpu, op, reg):
                st_set(x87, 0, st_get(x87, n))
        else:
            raise GuestFault(UD)
    elif op == 0xDB:
        if reg == 5 or reg == 6:
            _fcomi(cpu, x87, n, quiet=reg == 5, pops=0)
        elif modrm not in (0xE0, 0xE1, 0xE4):  # fneni, fndisi, fnsetpm: no-ops since the 387
            raise GuestFault(UD)
    elif op == 0xDD:
        if reg == 0:  # ffree
            x87.tags &= ~(1 << ((x87.top + n) & 7))
        elif reg == 2 or reg == 3:
            st_set(x87, n, st_get(x87, 0))
            if reg == 3:
                pop(x87)
        elif reg == 4 or reg == 5:  # fucom, fucomp
            set_cc(x87, compare(x87, st_get(x87, 0), st_get(x87, n), quiet=True))
            if reg == 5:
                pop(x87)
        else:
            raise GuestFault(UD)
    else:  # 0xDF
        if reg == 0:  # ffreep
            x87.tags &= ~(1 << ((x87.top + n) & 7))
            pop(x87)
        elif reg == 5 or reg == 6:
            _fcomi(cpu, x87, n, quiet=reg == 5, pops=1)
        else:
            raise GuestFault(UD)


# --- entry points -------------------------------------------------------------------------------
def escape(cpu, i: Insn) -> None:
    """One of D8-DF."""
    op = i.op
    if i.is_mem:
        addr = ea(cpu, i)
        if _memory_control(cpu, i, addr):
            return
        x87 = enter(cpu)
        record(x87, cpu, i, op, addr)
        try:
            _MEMORY[op](cpu, x87, i, addr)
        except Unmasked:
            pass
        return
    modrm = _modrm(i)
    if op == 0xDB and modrm in (0xE2, 0xE3):
        x87 = enter(cpu, waiting=False)
        if modrm == 0xE3:
            x87.reset()
        else:  # fnclex
            x87.fsw &= ~(FSW_EXCEPTIONS | FSW_SF | FSW_ES | FSW_B)
        return
    if op == 0xDF and modrm == 0xE0:  # fnstsw ax
        set_reg(cpu.s.regs, RAX, 2, enter(cpu, waiting=False).status_word)
        return
    x87 = enter(cpu)
    record(x87, cpu, i, op, 0)
    try:
        _register_form(cpu, x87, op, modrm)
    except Unmasked:
        pass


def fwait(cpu, i: Insn) -> None:
    s = cpu.s
    if s.cr0 & CR0_TS and s.cr0 & CR0_MP:
        raise GuestFault(NM)
    if s.x87.fsw & FSW_ES:
        raise GuestFault(MF)


def emms(cpu, i: Insn) -> None:
    """Leave MMX mode: every x87 register empty."""
    enter(cpu, waiting=True)
    cpu.s.x87.tags = 0


def _register() -> None:
    for op in range(0xD8, 0xE0):
        register(op, escape, modrm=True, name=f"x87 {op:#x}")
    register(0x9B, fwait)
    register(0x177, emms)


_register()

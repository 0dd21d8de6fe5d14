"""x87 floating-point instructions: the D8-DF escape opcodes, FWAIT and EMMS.

One handler, :func:`escape`, serves all eight escape opcodes through tables keyed by
(opcode, ModRM ``reg``), one for memory forms and one for register forms (mod 3); the forms
that the whole ModRM byte names (FNINIT, FLD1, FSIN …) are found by that byte. The model
itself lives in :mod:`.x87_arith`.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

from ..decoder import Insn, register
from ..faults import MF, NM, UD, GuestFault
from ..flags import condition
from ..fpu import (F80_EXP_MAX, F80_INDEFINITE, F80_INTEGER_BIT, FSW_C0, FSW_C1, FSW_C2, FSW_C3,
                   FSW_B, FSW_ES, FSW_EXCEPTIONS, FSW_IE, FSW_SF, FSW_ZE, MASK64, X87State, f80_is_nan,
                   f80_round_to_float, f80_to_float, float_to_f80)
from ..operands import ea, set_reg
from ..state import RAX
from .x87_arith import (COM, COMP, CONSTANTS, CR0_MP, CR0_TS, SIGN80, SUB, Unmasked, arith, compare,
                        compare_to_eflags, enter, fnsave, frstor, load_bcd, load_env, load_int,
                        load_real, pop, push, raise_flags, record, rounding, set_cc, st_get, st_set,
                        store_bcd, store_env, store_int, store_real)

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


# --- control and memory forms ----------------------------------------------------------------
# Tables keyed by (escape opcode, ModRM reg). A control form enters the x87 state itself,
# waiting or not, and is not recorded as the last x87 instruction; a data form runs once the
# state is entered and the instruction recorded; a (op, reg) in neither table is #UD.
ControlForm = Callable[[object, Insn, int], None]
DataForm = Callable[[object, X87State, int], None]
Reader = Callable[[object, int], int]
Writer = Callable[[object, X87State, int, int], None]


def _fldenv(cpu, i: Insn, addr: int) -> None:
    load_env(cpu, enter(cpu), addr, i.opsize)


def _fldcw(cpu, i: Insn, addr: int) -> None:
    x87 = enter(cpu)
    x87.fcw = cpu.mmu.read(addr, 2)
    x87.update_summary()


def _fnstenv(cpu, i: Insn, addr: int) -> None:
    """The environment, then every exception masked."""
    x87 = enter(cpu, waiting=False)
    store_env(cpu, x87, addr, i.opsize)
    x87.fcw |= 0x3F
    x87.update_summary()


def _fnstcw(cpu, i: Insn, addr: int) -> None:
    cpu.mmu.write(addr, 2, enter(cpu, waiting=False).fcw)


def _frstor(cpu, i: Insn, addr: int) -> None:
    frstor(cpu, enter(cpu), addr, i.opsize)


def _fnsave(cpu, i: Insn, addr: int) -> None:
    fnsave(cpu, enter(cpu, waiting=False), addr, i.opsize)


def _fnstsw(cpu, i: Insn, addr: int) -> None:
    cpu.mmu.write(addr, 2, enter(cpu, waiting=False).status_word)


def _reserved(cpu, i: Insn, addr: int) -> None:
    raise GuestFault(UD)


def _fninit(cpu, i: Insn, addr: int) -> None:
    enter(cpu, waiting=False).reset()


def _fnclex(cpu, i: Insn, addr: int) -> None:
    enter(cpu, waiting=False).fsw &= ~(FSW_EXCEPTIONS | FSW_SF | FSW_ES | FSW_B)


def _fnstsw_ax(cpu, i: Insn, addr: int) -> None:
    set_reg(cpu.s.regs, RAX, 2, enter(cpu, waiting=False).status_word)


# Register control forms are keyed by (escape opcode, whole ModRM byte).
_REGISTER_CONTROL: Dict[Tuple[int, int], ControlForm] = {
    (0xDB, 0xE2): _fnclex, (0xDB, 0xE3): _fninit, (0xDF, 0xE0): _fnstsw_ax,
}
_MEMORY_CONTROL: Dict[Tuple[int, int], ControlForm] = {
    (0xD9, 4): _fldenv, (0xD9, 5): _fldcw, (0xD9, 6): _fnstenv, (0xD9, 7): _fnstcw,
    (0xDD, 4): _frstor, (0xDD, 5): _reserved, (0xDD, 6): _fnsave, (0xDD, 7): _fnstsw,
}


def _real(size: int) -> Tuple[Reader, Writer]:
    return (lambda cpu, addr: load_real(cpu, addr, size),
            lambda cpu, x87, addr, raw: store_real(cpu, x87, addr, size, raw))


def _integer(size: int) -> Tuple[Reader, Writer]:
    return (lambda cpu, addr: load_int(cpu, addr, size),
            lambda cpu, x87, addr, raw: store_int(cpu, x87, addr, size, raw))


def _load(read: Reader) -> DataForm:
    def form(cpu, x87: X87State, addr: int) -> None:
        push(x87, read(cpu, addr))
    return form


def _store(write: Writer, pops: bool) -> DataForm:
    def form(cpu, x87: X87State, addr: int) -> None:
        write(cpu, x87, addr, st_get(x87, 0))
        if pops:
            pop(x87)
    return form


def _arith(read: Reader, op: int) -> DataForm:
    """ST(0) = ST(0) op the memory operand (FCOM/FCOMP compare them)."""
    def form(cpu, x87: X87State, addr: int) -> None:
        operand = read(cpu, addr)
        _arith_to(x87, op, 0, st_get(x87, 0), operand, 1 if op == COMP else 0)
    return form


def _data_forms() -> Dict[Tuple[int, int], DataForm]:
    forms: Dict[Tuple[int, int], DataForm] = {}
    for op, (read, _) in ((0xD8, _real(4)), (0xDA, _integer(4)), (0xDC, _real(8)), (0xDE, _integer(2))):
        for reg in range(8):
            forms[op, reg] = _arith(read, reg)
    # /0 loads, /2 stores and /3 stores and pops, each escape in its own format.
    for op, (read, write) in ((0xD9, _real(4)), (0xDB, _integer(4)), (0xDD, _real(8)), (0xDF, _integer(2))):
        forms[op, 0], forms[op, 2], forms[op, 3] = _load(read), _store(write, False), _store(write, True)
    # The 80-bit, 64-bit integer and packed BCD formats: a load and a store that always pops.
    # DB/1, DD/1, DF/1 (fisttp) are SSE3, which is not advertised.
    for (op, load_reg, store_reg), (read, write) in (((0xDB, 5, 7), _real(10)), ((0xDF, 5, 7), _integer(8)),
                                                     ((0xDF, 4, 6), (load_bcd, store_bcd))):
        forms[op, load_reg], forms[op, store_reg] = _load(read), _store(write, True)
    return forms


_MEMORY_DATA = _data_forms()


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


# FCMOVB/E/BE/U (DA) as Jcc condition codes; DB's FCMOVNB/NE/NBE/NU are their negations.
_FCMOV_CONDITIONS = (0x2, 0x4, 0x6, 0xA)


def _fcmov_condition(cpu, op: int, reg: int) -> bool:
    return condition(cpu.s, _FCMOV_CONDITIONS[reg & 3] | (op == 0xDB))


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


# A register form (mod 3) by (escape opcode, ModRM reg), given the whole ModRM byte; the low
# three bits name ST(i). A (op, reg) not in the table is #UD.
RegisterForm = Callable[[object, X87State, int], None]


def _st0_op_sti(op: int, pops: int) -> RegisterForm:
    def form(cpu, x87: X87State, modrm: int) -> None:
        _arith_to(x87, op, 0, st_get(x87, 0), st_get(x87, modrm & 7), pops)
    return form


def _sti_op_st0(reg: int, pops: int) -> RegisterForm:
    """ST(i) = ST(i) op ST(0): the SUB/SUBR and DIV/DIVR encodings swap against D8."""
    op = reg ^ 1 if reg >= SUB else reg
    def form(cpu, x87: X87State, modrm: int) -> None:
        n = modrm & 7
        _arith_to(x87, op, n, st_get(x87, n), st_get(x87, 0), pops)
    return form


def _fcompp(cpu, x87: X87State, modrm: int) -> None:
    if modrm != 0xD9:
        raise GuestFault(UD)
    _arith_to(x87, COMP, 0, st_get(x87, 0), st_get(x87, 1), 2)


def _fld_sti(cpu, x87: X87State, modrm: int) -> None:
    push(x87, st_get(x87, modrm & 7))


def _fxch(cpu, x87: X87State, modrm: int) -> None:
    n = modrm & 7
    a, b = st_get(x87, 0), st_get(x87, n)
    st_set(x87, 0, b)
    st_set(x87, n, a)
    x87.fsw &= ~FSW_C1


def _d9_by_modrm(cpu, x87: X87State, modrm: int) -> None:
    """The constants (FLD1, FLDPI …) and the operand-less D9 forms (FCHS, FSIN …)."""
    if modrm in CONSTANTS:
        push(x87, CONSTANTS[modrm])
    elif modrm in _D9_SPECIAL:
        _D9_SPECIAL[modrm](x87)
    else:
        raise GuestFault(UD)


def _fcmov(op: int, reg: int) -> RegisterForm:
    def form(cpu, x87: X87State, modrm: int) -> None:
        if _fcmov_condition(cpu, op, reg):
            st_set(x87, 0, st_get(x87, modrm & 7))
    return form


def _fucompp(cpu, x87: X87State, modrm: int) -> None:
    if modrm != 0xE9:
        raise GuestFault(UD)
    set_cc(x87, compare(x87, st_get(x87, 0), st_get(x87, 1), quiet=True))
    pop(x87)
    pop(x87)


def _fcomi_form(quiet: bool, pops: int) -> RegisterForm:
    def form(cpu, x87: X87State, modrm: int) -> None:
        _fcomi(cpu, x87, modrm & 7, quiet, pops)
    return form


def _legacy_no_op(cpu, x87: X87State, modrm: int) -> None:
    """FNENI, FNDISI, FNSETPM: no-ops since the 387."""
    if modrm not in (0xE0, 0xE1, 0xE4):
        raise GuestFault(UD)


def _ffree(pops: bool) -> RegisterForm:
    def form(cpu, x87: X87State, modrm: int) -> None:
        x87.tags &= ~(1 << ((x87.top + (modrm & 7)) & 7))
        if pops:
            pop(x87)
    return form


def _fst_sti(pops: bool) -> RegisterForm:
    def form(cpu, x87: X87State, modrm: int) -> None:
        st_set(x87, modrm & 7, st_get(x87, 0))
        if pops:
            pop(x87)
    return form


def _fucom(pops: bool) -> RegisterForm:
    def form(cpu, x87: X87State, modrm: int) -> None:
        set_cc(x87, compare(x87, st_get(x87, 0), st_get(x87, modrm & 7), quiet=True))
        if pops:
            pop(x87)
    return form


def _register_forms() -> Dict[Tuple[int, int], RegisterForm]:
    forms: Dict[Tuple[int, int], RegisterForm] = {}
    for reg in range(8):
        forms[0xD8, reg] = _st0_op_sti(reg, 1 if reg == COMP else 0)
        if reg not in (COM, COMP):
            forms[0xDC, reg] = _sti_op_st0(reg, 0)
            forms[0xDE, reg] = _sti_op_st0(reg, 1)
    forms[0xDC, COM], forms[0xDC, COMP] = forms[0xD8, COM], forms[0xD8, COMP]
    forms[0xDE, COMP] = _fcompp
    forms[0xD9, 0], forms[0xD9, 1] = _fld_sti, _fxch
    for reg in range(2, 8):
        forms[0xD9, reg] = _d9_by_modrm
    for reg in range(4):
        forms[0xDA, reg], forms[0xDB, reg] = _fcmov(0xDA, reg), _fcmov(0xDB, reg)
    forms[0xDA, 5] = _fucompp
    forms[0xDB, 4] = _legacy_no_op
    forms[0xDB, 5], forms[0xDB, 6] = _fcomi_form(quiet=True, pops=0), _fcomi_form(quiet=False, pops=0)
    forms[0xDD, 0], forms[0xDD, 2], forms[0xDD, 3] = _ffree(False), _fst_sti(False), _fst_sti(True)
    forms[0xDD, 4], forms[0xDD, 5] = _fucom(False), _fucom(True)
    forms[0xDF, 0] = _ffree(True)
    forms[0xDF, 5], forms[0xDF, 6] = _fcomi_form(quiet=True, pops=1), _fcomi_form(quiet=False, pops=1)
    return forms


_REGISTER = _register_forms()


# --- entry points -------------------------------------------------------------------------------
def escape(cpu, i: Insn) -> None:
    """One of D8-DF: a control form, or a data/register form once the x87 state is entered
    and the instruction recorded."""
    op = i.op
    if i.is_mem:
        operand = address = ea(cpu, i)
        key = (op, i.raw_reg)
        control = _MEMORY_CONTROL.get(key)
        form = _MEMORY_DATA.get(key)
    else:
        operand, address = _modrm(i), 0
        control = _REGISTER_CONTROL.get((op, operand))
        form = _REGISTER.get((op, i.raw_reg))
    if control is not None:
        control(cpu, i, address)
        return
    x87 = enter(cpu)
    record(x87, cpu, i, op, address)
    if form is None:
        raise GuestFault(UD)
    try:
        form(cpu, x87, operand)
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

"""Instruction translators: one emitter per interpreter handler, in one table.

:data:`EMITTERS` maps the handler the decoder put in an :class:`Insn` to a function that
emits that instruction's Python source through a :class:`~.translate.BlockCodegen`. A
handler missing from the table (or an emitter raising :class:`~.translate.Untranslatable`
for a form it does not cover) makes the translator call the handler itself.

Each emitter does every load and store before it writes a register, so a fault leaves the
registers as they were before the instruction; flag locals may be written at any time,
since a fault restores the flags recorded before the instruction. 64-bit operands are in
the signed register form (see :mod:`.translate`): immediates go through ``gen.imm``,
results that may overflow through ``gen.arith64``.
"""

from __future__ import annotations

from typing import Callable, Dict

from .decoder import Insn
from .flags import CC_ADC, CC_ADD, CC_DEC, CC_EAGER, CC_INC, CC_LOGIC, CC_SBB, CC_SUB
from .insns import alu, control, mov, muldiv, shift, stack, system
from .state import ARITH_FLAGS, RAX, RF, VM
from .translate import MASK, SIGN, BlockCodegen, FlagSource, Untranslatable, literal_value
from .translate_system import SYSTEM_EMITTERS

ADD, OR, ADC, SBB, AND, SUB, XOR, CMP = range(8)


def _alu(gen: BlockCodegen, i: Insn, kind: int, dest: int, dest_is_rm: bool, src: str) -> None:
    """``dest kind= src``; ``dest`` is a register number unless ``dest_is_rm`` with memory."""
    size = i.opsize
    mask = MASK[size]
    in_memory = dest_is_rm and i.is_mem
    if in_memory:
        value = gen.load(gen.address(i), size, update=kind != CMP)
    else:
        value = gen.reg(dest, size)
    k = gen.index
    if kind == ADC or kind == SBB:
        carry = gen.carry()
        sign = "+" if kind == ADC else "-"
        gen.emit(f"fc{k} = {carry}")
        if size == 8:
            gen.arith64(f"fr{k}", value, sign, src)
            gen.arith64(f"fr{k}", f"fr{k}", sign, f"fc{k}")
            res = ""
        else:
            res = f"({value} {sign} {src} {sign} fc{k}) & {mask:#x}"
        gen.set_flags(CC_ADC if kind == ADC else CC_SBB, size, value, src, res)
        if in_memory:
            gen.store("a", size, f"fr{k}")
        else:
            gen.set_reg(dest, size, f"fr{k}")
        return
    if size == 8 and (kind == ADD or ((kind == SUB or kind == CMP) and src != value)):
        gen.add64(value, src, kind != ADD)
        gen.set_flags(CC_ADD if kind == ADD else CC_SUB, size, value, src, "")
    elif (kind == SUB or kind == XOR) and src == value:
        gen.set_flags(CC_SUB if kind == SUB else CC_LOGIC, size, value, src, "0")
    elif kind == ADD:
        gen.set_flags_from(CC_ADD, size, value, src, lambda a, b: f"({a} + {b}) & {mask:#x}")
    elif kind == SUB or kind == CMP:
        gen.set_flags_from(CC_SUB, size, value, src, lambda a, b: f"({a} - {b}) & {mask:#x}")
    elif kind == AND:
        gen.set_flags_from(CC_LOGIC, size, value, src, lambda a, b: f"{a} & {b}")
    elif kind == OR:
        gen.set_flags_from(CC_LOGIC, size, value, src, lambda a, b: f"{a} | {b}")
    else:
        gen.set_flags_from(CC_LOGIC, size, value, src, lambda a, b: f"{a} ^ {b}")
    if kind == CMP:
        return
    if in_memory:
        gen.store("a", size, f"fr{k}")
        return
    moved = literal_value(src) if size == 8 and (kind == ADD or kind == SUB) else None
    if moved is not None and kind == SUB:
        moved = -moved
    gen.set_reg(dest, size, f"fr{k}", moved_by=moved)  # add/sub rsp, n keep its hints


def alu_rm_r(gen: BlockCodegen, i: Insn) -> None:
    _alu(gen, i, (i.op >> 3) & 7, i.rm, True, gen.reg(i.reg, i.opsize))


def alu_r_rm(gen: BlockCodegen, i: Insn) -> None:
    kind = (i.op >> 3) & 7
    src = gen.read_operand(i, i.opsize)
    _alu(gen, i, kind, i.reg, False, src)


def alu_acc_imm(gen: BlockCodegen, i: Insn) -> None:
    _alu(gen, i, (i.op >> 3) & 7, RAX, False, gen.imm(i.imm, i.opsize))


def alu_rm_imm(gen: BlockCodegen, i: Insn) -> None:
    _alu(gen, i, i.raw_reg, i.rm, True, gen.imm(i.imm, i.opsize))


def _test(gen: BlockCodegen, i: Insn, a: str, b: str) -> None:
    gen.set_flags_from(CC_LOGIC, i.opsize, a, b, lambda a, b: f"{a} & {b}")


def test_rm_r(gen: BlockCodegen, i: Insn) -> None:
    _test(gen, i, gen.read_operand(i, i.opsize), gen.reg(i.reg, i.opsize))


def test_rm_imm(gen: BlockCodegen, i: Insn) -> None:
    _test(gen, i, gen.read_operand(i, i.opsize), gen.imm(i.imm, i.opsize))


def test_acc_imm(gen: BlockCodegen, i: Insn) -> None:
    _test(gen, i, gen.reg(RAX, i.opsize), gen.imm(i.imm, i.opsize))


def _unary(gen: BlockCodegen, i: Insn, reg: int, on_rm: bool, result) -> None:
    """Read-modify-write of one operand; ``result(value, k)`` emits flags, returns the value."""
    size = i.opsize
    in_memory = on_rm and i.is_mem
    value = gen.load(gen.address(i), size, update=True) if in_memory else gen.reg(reg, size)
    out = result(value, gen.index)
    if in_memory:
        gen.store("a", size, out)
    else:
        gen.set_reg(reg, size, out)


def _incdec(gen: BlockCodegen, i: Insn, reg: int, on_rm: bool, inc: bool) -> None:
    mask = MASK[i.opsize]

    def result(value: str, k: int) -> str:
        carry = gen.carry()
        op = CC_INC if inc else CC_DEC
        if i.opsize == 8:
            gen.add64(value, "1", not inc)
            gen.set_flags(op, 8, value, "1", "", carry=carry)  # fr<k> is already computed
        else:
            sign = "+" if inc else "-"
            gen.set_flags_from(op, i.opsize, value, "1", lambda a, _one: f"({a} {sign} 1) & {mask:#x}", carry)
        return f"fr{k}"

    _unary(gen, i, reg, on_rm, result)


def inc_rm(gen: BlockCodegen, i: Insn) -> None:
    _incdec(gen, i, i.rm, True, True)


def dec_rm(gen: BlockCodegen, i: Insn) -> None:
    _incdec(gen, i, i.rm, True, False)


def inc_dec_reg(gen: BlockCodegen, i: Insn) -> None:
    _incdec(gen, i, i.reg, False, i.op < 0x48)


def neg_rm(gen: BlockCodegen, i: Insn) -> None:
    mask = MASK[i.opsize]

    def result(value: str, k: int) -> str:
        if i.opsize == 8:
            gen.add64("0", value, True)
            gen.set_flags(CC_SUB, 8, "0", value, "")
        else:
            gen.set_flags(CC_SUB, i.opsize, "0", value, f"(-{value}) & {mask:#x}")
        return f"fr{k}"

    _unary(gen, i, i.rm, True, result)


def not_rm(gen: BlockCodegen, i: Insn) -> None:
    mask = MASK[i.opsize]
    _unary(gen, i, i.rm, True,
           lambda value, k: f"~{value}" if i.opsize == 8 else f"{value} ^ {mask:#x}")


# --- data movement -----------------------------------------------------------------------
def _write_rm(gen: BlockCodegen, i: Insn, size: int, value: str) -> None:
    if i.is_mem:
        gen.store(gen.address(i), size, value)
    else:
        gen.set_reg(i.rm, size, value)


def mov_rm_r(gen: BlockCodegen, i: Insn) -> None:
    _write_rm(gen, i, i.opsize, gen.reg(i.reg, i.opsize))


def mov_r_rm(gen: BlockCodegen, i: Insn) -> None:
    gen.set_reg(i.reg, i.opsize, gen.read_operand(i, i.opsize))


def mov_rm_imm(gen: BlockCodegen, i: Insn) -> None:
    _write_rm(gen, i, i.opsize, gen.imm(i.imm, i.opsize))


def mov_reg_imm(gen: BlockCodegen, i: Insn) -> None:
    gen.set_reg(i.reg, i.opsize, gen.imm(i.imm, i.opsize))


def mov_acc_moffs(gen: BlockCodegen, i: Insn) -> None:
    gen.set_reg(RAX, i.opsize, gen.load(gen.address(i), i.opsize))


def mov_moffs_acc(gen: BlockCodegen, i: Insn) -> None:
    gen.store(gen.address(i), i.opsize, gen.reg(RAX, i.opsize))


def lea(gen: BlockCodegen, i: Insn) -> None:
    value = gen.offset(i, fold=True)
    if i.opsize < i.adsize:
        value = f"({value}) & {MASK[i.opsize]:#x}"
    gen.set_reg(i.reg, i.opsize, value)


def _extend(gen: BlockCodegen, i: Insn, from_size: int, signed: bool) -> None:
    value = gen.read_operand(i, from_size)
    if signed:
        value = gen.sign_extended(value, from_size)
        if i.opsize != 8:
            value += f" & {MASK[i.opsize]:#x}"
    gen.set_reg(i.reg, i.opsize, value)


def movzx8(gen: BlockCodegen, i: Insn) -> None:
    _extend(gen, i, 1, False)


def movzx16(gen: BlockCodegen, i: Insn) -> None:
    _extend(gen, i, 2, False)


def movsx8(gen: BlockCodegen, i: Insn) -> None:
    _extend(gen, i, 1, True)


def movsx16(gen: BlockCodegen, i: Insn) -> None:
    _extend(gen, i, 2, True)


def movsxd(gen: BlockCodegen, i: Insn) -> None:
    if i.bits != 64:
        raise Untranslatable("arpl")
    if i.opsize == 8:
        _extend(gen, i, 4, True)
    else:
        gen.set_reg(i.reg, i.opsize, f"{gen.read_operand(i, 4)} & {MASK[i.opsize]:#x}")


def xchg_acc_reg(gen: BlockCodegen, i: Insn) -> None:
    if i.reg == RAX:
        return  # nop / pause
    size = i.opsize
    gen.emit(f"x = {gen.reg(i.reg, size)}")
    gen.emit(f"y = {gen.reg(RAX, size)}")
    gen.set_reg(i.reg, size, "y")
    gen.set_reg(RAX, size, "x")


def xchg_rm_r(gen: BlockCodegen, i: Insn) -> None:
    size = i.opsize
    if i.is_mem:
        old = gen.load(gen.address(i), size, update=True)
        gen.store("a", size, gen.reg(i.reg, size))
    else:
        old = gen.temp()
        gen.emit(f"{old} = {gen.reg(i.rm, size)}")
        gen.set_reg(i.rm, size, gen.reg(i.reg, size))
    gen.set_reg(i.reg, size, old)


def nop(gen: BlockCodegen, i: Insn) -> None:
    pass


def setcc(gen: BlockCodegen, i: Insn) -> None:
    value = gen.temp()
    gen.emit(f"{value} = {gen.condition_bit(i.op & 0xF)}")
    _write_rm(gen, i, 1, value)


def cmovcc(gen: BlockCodegen, i: Insn) -> None:
    size = i.opsize
    value = gen.read_operand(i, size)  # read (and able to fault) whatever the condition
    keep = f"r{i.reg}" if size != 4 else f"(r{i.reg} & 0xFFFFFFFF)"
    # keep ^ ((new ^ keep) & -c) is new when c is 1, keep when 0: no test on the data.
    gen.emit(f"c = {gen.condition_bit(i.op & 0xF)}")
    gen.set_reg(i.reg, 8, f"{keep} ^ ((({gen.merged(i.reg, size, value)}) ^ {keep}) & -c)")


def _imul(gen: BlockCodegen, i: Insn, a: str, b: str) -> None:
    """imul r, r/m[, imm]: the low half to the register, CF=OF when it lost bits."""
    size = i.opsize
    sign, mask = SIGN[size], MASK[size]
    if size == 8:  # signed already
        # The low half wraps in a machine word; the full product (a long integer once it
        # passes 64 bits, slow on PyPy) is computed only in the flags, which are most
        # often dead and pruned (the kernel's bignum code multiplies 32-bit halves).
        low = gen.arith64(f"fr{gen.index}", f"({a})", "*", f"({b})")
        lost = f"fc{gen.index}"
        gen.emit(f"{lost} = 0 if {low} == ({a}) * ({b}) else 1")
        gen.set_eager(size, low, lost, lost)
        gen.set_reg(i.reg, size, low)
        return
    else:
        gen.emit(f"p = ((({a}) ^ {sign:#x}) - {sign:#x}) * ((({b}) ^ {sign:#x}) - {sign:#x})")
        gen.emit(f"y = p & {mask:#x}")
        gen.emit(f"w = 1 if ((y ^ {sign:#x}) - {sign:#x}) != p else 0")
    gen.set_eager(size, "y", "w", "w")
    gen.set_reg(i.reg, size, f"fr{gen.index}")


def imul2(gen: BlockCodegen, i: Insn) -> None:
    b = gen.read_operand(i, i.opsize)
    _imul(gen, i, gen.reg(i.reg, i.opsize), b)


def imul3(gen: BlockCodegen, i: Insn) -> None:
    _imul(gen, i, gen.read_operand(i, i.opsize), gen.imm(i.imm, i.opsize))


def cbw(gen: BlockCodegen, i: Insn) -> None:
    half = i.opsize // 2
    sign = SIGN[half]
    value = f"(({gen.reg(RAX, half)} ^ {sign:#x}) - {sign:#x})"
    gen.set_reg(RAX, i.opsize, value if i.opsize == 8 else f"{value} & {MASK[i.opsize]:#x}")


def cwd(gen: BlockCodegen, i: Insn) -> None:
    size = i.opsize
    ones = -1 if size == 8 else MASK[size]
    gen.set_reg(2, size, f"{ones:#x} if {gen.negative(gen.reg(RAX, size), size)} else 0")


# --- shifts and rotates: flags computed eagerly into one local ------------------------------
def _shift_by_cl(gen: BlockCodegen, i: Insn, kind: int) -> None:
    """shl/shr/sar by CL: the count is known only at run time, and a zero count leaves the
    flags alone, so both outcomes end in one eager flags local."""
    size = i.opsize
    bits = size * 8
    mask = MASK[size]
    k = gen.index
    value = gen.read_operand(i, size, update=True)
    previous = gen.arith_flags()
    gen.emit(f"n = {gen.reg(1, 1)} & {0x3F if size == 8 else 0x1F}")
    gen.emit(f"x = {value}")
    gen.emit("if n:")
    gen.indent += 1
    if kind == shift.SHR:
        gen.emit(f"y = {gen.logical_shift_right('x', 'n', size)}")
        gen.emit("cf = (x >> (n - 1)) & 1")
        gen.emit(f"of = (x >> {bits - 1}) & 1")
    elif kind == shift.SAR:
        sign = SIGN[size]
        if size == 8:
            gen.emit("y = x >> n")
            gen.emit("cf = (x >> (n - 1)) & 1")
        else:
            gen.emit(f"w = (x ^ {sign:#x}) - {sign:#x}")
            gen.emit(f"y = (w >> n) & {mask:#x}")
            gen.emit("cf = (w >> (n - 1)) & 1")
        gen.emit("of = 0")
    else:
        if size == 8:
            gen.arith64("y", "x", "<<", "n")
        else:
            gen.emit(f"y = (x << n) & {mask:#x}")
        gen.emit(f"cf = (x >> ({bits} - n)) & 1 if n <= {bits} else 0")
        gen.emit(f"of = ((y >> {bits - 1}) & 1) ^ cf")
    gen.emit(f"fl{k} = PARITY[y & 255] | (64 if y == 0 else 0) | "
             f"(128 if {gen.negative('y', size)} else 0) | cf | (of << 11)")
    gen.indent -= 1
    gen.emit("else:")
    gen.emit("    y = x")
    gen.emit(f"    fl{k} = {previous}")
    gen.flags = FlagSource(k, CC_EAGER, size)
    if i.is_mem:
        gen.emit("if n:")
        gen.indent += 1
        gen.store("a", size, "y")
        gen.indent -= 1
    else:
        gen.set_reg(i.rm, size, "y")


def _rotate(gen: BlockCodegen, i: Insn, kind: int, count: int) -> None:
    """rol/ror by a constant: only CF and OF change."""
    size = i.opsize
    bits = size * 8
    mask = MASK[size]
    k = gen.index
    value = gen.read_operand(i, size, update=True)
    if count == 0:
        if size == 4 and not i.is_mem:
            gen.set_reg(i.rm, 4, value)
        return
    previous = gen.arith_flags()
    n = count % bits
    gen.emit(f"x = {value}")
    if n == 0:
        gen.emit("y = x")
    elif size == 8:
        # The wrapped left part is in the signed form; the right part only fills its low bits.
        left = n if kind == shift.ROL else bits - n
        gen.arith64("y", "x", "<<", str(left))
        gen.emit(f"y |= {gen.logical_shift_right('x', str(bits - left), size)}")
    elif kind == shift.ROL:
        gen.emit(f"y = ((x << {n}) | (x >> {bits - n})) & {mask:#x}")
    else:
        gen.emit(f"y = ((x >> {n}) | (x << {bits - n})) & {mask:#x}")
    if kind == shift.ROL:
        gen.emit("cf = y & 1")
        gen.emit(f"of = ((y >> {bits - 1}) & 1) ^ cf")
    else:
        gen.emit(f"cf = (y >> {bits - 1}) & 1")
        gen.emit(f"of = cf ^ ((y >> {bits - 2}) & 1)")
    gen.emit(f"fl{k} = ({previous} & {~0x801 & 0xFFF:#x}) | cf | (of << 11)")
    gen.flags = FlagSource(k, CC_EAGER, size)
    if i.is_mem:
        gen.store("a", size, "y")
    else:
        gen.set_reg(i.rm, size, "y")


def shift_rm(gen: BlockCodegen, i: Insn) -> None:
    kind = i.raw_reg
    by_cl = i.op in (0xD2, 0xD3)
    size = i.opsize
    count = (1 if i.op in (0xD0, 0xD1) else i.imm) & (0x3F if size == 8 else 0x1F)
    if kind == shift.ROL or kind == shift.ROR:
        if by_cl:
            raise Untranslatable("rotate by CL")
        _rotate(gen, i, kind, count)
        return
    if kind not in (shift.SHL, shift.SHR, shift.SAL, shift.SAR):
        raise Untranslatable("rotates through carry")
    if by_cl:
        _shift_by_cl(gen, i, kind)
        return
    bits = size * 8
    value = gen.read_operand(i, size, update=True)
    if count == 0:
        # Flags and value unchanged, but a 32-bit register is still written (bits 63:32 clear).
        if size == 4 and not i.is_mem:
            gen.set_reg(i.rm, 4, value)
        return
    if count >= bits:
        raise Untranslatable("shift count beyond the operand width")
    mask = MASK[size]
    k = gen.index
    if kind == shift.SHL or kind == shift.SAL:
        if size == 8:
            res = gen.arith64(f"fr{k}", value, "<<", str(count))
        else:
            res = f"({value} << {count}) & {mask:#x}"
        cf = f"({value} >> {bits - count}) & 1"
        of = f"((fr{k} >> {bits - 1}) ^ ({value} >> {bits - count})) & 1"
    elif kind == shift.SHR:
        res = gen.logical_shift_right(value, str(count), size)
        cf = f"({value} >> {count - 1}) & 1"
        of = f"({value} >> {bits - 1}) & 1"
    else:
        sign = SIGN[size]
        if size == 8:
            res = f"{value} >> {count}"
        else:
            res = f"((({value} ^ {sign:#x}) - {sign:#x}) >> {count}) & {mask:#x}"
        cf = f"({value} >> {count - 1}) & 1"
        of = "0"
    gen.set_eager(size, res, cf, of)
    if i.is_mem:
        gen.store("a", size, f"fr{k}")
    else:
        gen.set_reg(i.rm, size, f"fr{k}")


# --- stack ---------------------------------------------------------------------------------
def push_reg(gen: BlockCodegen, i: Insn) -> None:
    gen.push(i.opsize, gen.reg(i.reg, i.opsize))


def pop_reg(gen: BlockCodegen, i: Insn) -> None:
    gen.set_reg(i.reg, i.opsize, gen.pop(i.opsize))


def push_imm(gen: BlockCodegen, i: Insn) -> None:
    gen.push(i.opsize, gen.imm(i.imm, i.opsize))


def push_rm(gen: BlockCodegen, i: Insn) -> None:
    gen.push(i.opsize, gen.read_operand(i, i.opsize))


def pushf(gen: BlockCodegen, i: Insn) -> None:
    if gen.bits != 64:
        raise Untranslatable("pushf where virtual-8086 mode may apply")
    arith = gen.arith_flags()
    keep = ~(ARITH_FLAGS | VM | RF)
    if i.opsize != 8:
        keep &= MASK[i.opsize]
    gen.push(i.opsize, f"(s.rflags & {keep:#x}) | {arith} | 2")


# --- control transfer (always the block's last instruction) -------------------------------
def _end(gen: BlockCodegen, rip: str) -> None:
    gen.exit(rip, gen.index + 1)
    gen.ended = True


def _jump(gen: BlockCodegen, rip: int) -> None:
    gen.jump(rip, gen.index + 1)
    gen.ended = True


def jmp_rel(gen: BlockCodegen, i: Insn) -> None:
    if gen.index < gen.part_last:
        return  # the block goes on at the target (see Cpu._build_block)
    _jump(gen, i.imm)


def jcc(gen: BlockCodegen, i: Insn) -> None:
    last = gen.index == gen.part_last
    if last and i.imm not in gen.labels and i.next_rip not in gen.labels:
        # Both ways leave the function: one exit, half the source to generate and compile.
        gen.emit(f"c = {gen.condition(i.op & 0xF)}")
        _end(gen, f"{i.imm:#x} if c else {i.next_rip:#x}")
        return
    gen.emit(f"if {gen.condition(i.op & 0xF)}:")
    gen.indent += 1
    gen.jump(i.imm, gen.index + 1)
    gen.indent -= 1
    if last:
        _jump(gen, i.next_rip)


def call_rel(gen: BlockCodegen, i: Insn) -> None:
    gen.push(i.opsize, gen.imm(i.next_rip, i.opsize))
    if gen.index < gen.part_last:
        return  # the block goes on at the target (see Cpu._build_block)
    _jump(gen, i.imm)


def jmp_rm(gen: BlockCodegen, i: Insn) -> None:
    # The operand, read at the operand size, already has the right instruction-pointer width.
    _end(gen, gen.read_operand(i, i.opsize))


def call_rm(gen: BlockCodegen, i: Insn) -> None:
    target = gen.read_operand(i, i.opsize)
    gen.push(i.opsize, gen.imm(i.next_rip, i.opsize))
    _end(gen, target)


def ret_near(gen: BlockCodegen, i: Insn) -> None:
    target = gen.pop(i.opsize)
    if i.op == 0xC2:
        if gen.bits == 64:
            gen.set_reg(4, 8, gen.arith64("sp", "r4", "+", f"{i.imm:#x}"))
        else:
            gen.set_reg(4, 8, f"(r4 & ~smask) | ((r4 + {i.imm:#x}) & smask)")
    _end(gen, target)


EMITTERS: Dict[Callable, Callable[[BlockCodegen, Insn], None]] = {
    alu.alu_rm_r: alu_rm_r, alu.alu_r_rm: alu_r_rm, alu.alu_acc_imm: alu_acc_imm,
    alu.alu_rm_imm: alu_rm_imm, alu.test_rm_r: test_rm_r, alu.test_rm_imm: test_rm_imm,
    alu.test_acc_imm: test_acc_imm, alu.inc_rm: inc_rm, alu.dec_rm: dec_rm,
    alu.inc_dec_reg: inc_dec_reg, alu.neg_rm: neg_rm, alu.not_rm: not_rm,
    mov.mov_rm_r: mov_rm_r, mov.mov_r_rm: mov_r_rm, mov.mov_rm_imm: mov_rm_imm,
    mov.mov_reg_imm: mov_reg_imm, mov.mov_acc_moffs: mov_acc_moffs,
    mov.mov_moffs_acc: mov_moffs_acc, mov.lea: lea, mov.movzx8: movzx8, mov.movzx16: movzx16,
    mov.movsx8: movsx8, mov.movsx16: movsx16, mov.movsxd: movsxd,
    mov.xchg_acc_reg: xchg_acc_reg, mov.xchg_rm_r: xchg_rm_r, mov.nop: nop,
    system.nop_modrm: nop, mov.setcc: setcc, mov.cmovcc: cmovcc, mov.cbw: cbw, mov.cwd: cwd,
    shift.shift_rm: shift_rm, muldiv.imul2: imul2, muldiv.imul3: imul3,
    stack.push_reg: push_reg, stack.pop_reg: pop_reg, stack.push_imm: push_imm,
    stack.push_rm: push_rm, stack.pushf: pushf,
    control.jmp_rel: jmp_rel, control.jcc: jcc, control.call_rel: call_rel,
    control.jmp_rm: jmp_rm, control.call_rm: call_rm, control.ret_near: ret_near,
}
EMITTERS.update(SYSTEM_EMITTERS)

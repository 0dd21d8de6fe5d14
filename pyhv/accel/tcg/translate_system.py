"""Instruction translators for the bit-test family, lock cmpxchg/xadd, bswap, fences, rdtsc,
cli, leave and reads of segment selectors.

The instructions the Linux kernel runs millions of times in a boot that are neither plain
arithmetic nor moves (its spinlocks, atomics, bitmaps, delay loops, irqsave sections, frame
pointers, and the iret frames of sync_core). The rules of
:mod:`.translate_insns` hold: loads and stores before register writes; flag locals at will.
"""

from __future__ import annotations

from typing import Callable, Dict

from .decoder import Insn
from .faults import GP
from .flags import CC_ADD, CC_EAGER, CC_SUB
from .insns import bit as bit_insns
from .insns import mov, stack, system, sysregs
from .state import ARITH_FLAGS, CF, IF, IOPL, RAX, RDX
from .translate import MASK, BlockCodegen, FlagSource, Untranslatable


def cmpxchg(gen: BlockCodegen, i: Insn) -> None:
    """Memory form (lock cmpxchg: the kernel's spinlocks and atomics); the register form
    goes through the handler. The flags are those of cmp accumulator, destination; the
    destination is always written (the locked cycle), the accumulator only on a mismatch."""
    if not i.is_mem:
        raise Untranslatable("register cmpxchg through the handler")
    size = i.opsize
    k = gen.index
    dest = gen.load(gen.address(i), size, update=True)
    acc = gen.reg(RAX, size)
    if size == 8:
        gen.add64(acc, dest, True)
        gen.set_flags(CC_SUB, size, acc, dest, "")
    else:
        gen.set_flags(CC_SUB, size, acc, dest, f"({acc} - {dest}) & {MASK[size]:#x}")
    gen.emit(f"x{k} = {gen.reg(i.reg, size)} if fa{k} == fb{k} else {dest}")
    gen.store("a", size, f"x{k}")
    gen.emit(f"if fa{k} != fb{k}:")
    gen.indent += 1
    gen.set_reg(RAX, size, dest)
    gen.indent -= 1


def _bit_op(gen: BlockCodegen, i: Insn, kind: int, bit: str, address: str = "") -> None:
    """bt/bts/btr/btc of bit ``bit`` (an expression already reduced to the operand size): CF
    gets the bit, the other flags stay as they were. ``address``: a memory operand's linear
    address where it is not the instruction's own (a register bit offset moves it)."""
    size = i.opsize
    if i.is_mem:
        value = gen.load(address or gen.address(i), size, update=kind != bit_insns.BT)
    else:
        value = gen.reg(i.rm, size)
    arith = gen.arith_flags()
    k = gen.index
    gen.emit(f"fl{k} = ({arith} & {ARITH_FLAGS & ~CF:#x}) | (({value} >> {bit}) & 1)")
    gen.flags = FlagSource(k, CC_EAGER, size)
    if kind == bit_insns.BT:
        return
    new = {bit_insns.BTS: f"{value} | (1 << {bit})", bit_insns.BTR: f"{value} & ~(1 << {bit})",
           bit_insns.BTC: f"{value} ^ (1 << {bit})"}[kind]
    if size == 8:  # bit 63 takes the value out of the signed form
        gen.emit(f"x{k} = {new}")
        gen.fold64(f"x{k}")
        new = f"x{k}"
    if i.is_mem:
        gen.store("a", size, new)
    else:
        gen.set_reg(i.rm, size, new)


def bt_imm(gen: BlockCodegen, i: Insn) -> None:
    _bit_op(gen, i, i.raw_reg - 4, f"{i.imm & (8 * i.opsize - 1)}")


def bt_reg(gen: BlockCodegen, i: Insn) -> None:
    size = i.opsize
    kind = bit_insns.KIND_BY_OP[i.op]
    bit = f"({gen.reg(i.reg, size)} & {8 * size - 1})"
    if not i.is_mem:
        _bit_op(gen, i, kind, bit)
        return
    if gen.bits != 64 or i.adsize != 8:
        raise Untranslatable("a register bit offset into memory outside 64-bit addressing")
    # The offset, signed, moves the operand by whole operands: Linux's bitmap helpers
    # (test_bit, set_bit on cpumasks and page flags) take this form.
    offset = gen.reg(i.reg, size)
    if size != 8:
        offset = gen.sign_extended(offset, size)
    # A plain sum folded after: an indexed address can leave the 64-bit range before the
    # bit offset moves it (PyPy's wrapping int_add refuses such an operand).
    address = f"e{gen.index}"
    gen.emit(f"{address} = {gen.linear(i)} + (({offset} >> {3 + size.bit_length() - 1}) * {size})")
    gen.fold64(address)
    _bit_op(gen, i, kind, bit, address)


def fence(gen: BlockCodegen, i: Insn) -> None:
    if i.is_mem:
        raise Untranslatable("clflush (and the xsave forms) through the handler")
    # lfence/mfence/sfence: one CPU with sequential memory has nothing to wait for.


def serialize(gen: BlockCodegen, i: Insn) -> None:
    if not sysregs.is_serialize(i):
        raise Untranslatable("0F 01 /5 other than serialize: #UD through the handler")


def bswap(gen: BlockCodegen, i: Insn) -> None:
    size = i.opsize
    if size == 2:
        gen.set_reg(i.reg, 2, "0")  # undefined; what current CPUs do (as the handler)
        return
    signed = ", signed=True" if size == 8 else ""
    gen.set_reg(i.reg, size, f"int.from_bytes({gen.reg(i.reg, size)}.to_bytes({size}, 'little'"
                             f"{signed}), 'big'{signed})")


def rdtsc(gen: BlockCodegen, i: Insn) -> None:
    # The kernel's delay and clock loops run rdtsc millions of times in a boot; through the
    # interpreter each one stored and reloaded the whole block state.
    gen.may_fault()
    gen.emit(f"if s.cr4 & {system.CR4_TSD:#x} and s.cpl != 0:")
    gen.emit(f"    raise GuestFault({GP}, 0)")
    tsc = gen.temp()
    gen.emit(f"{tsc} = read_tsc(cpu)")
    gen.set_reg(RAX, 8, f"{tsc} & 0xffffffff")
    gen.set_reg(RDX, 8, f"{tsc} >> 32")


def xadd(gen: BlockCodegen, i: Insn) -> None:
    """The kernel's atomic_add_return and reference counts (lock xadd)."""
    size = i.opsize
    k = gen.index
    dest = gen.temp()
    if i.is_mem:
        gen.emit(f"{dest} = {gen.load(gen.address(i), size, update=True)}")
    else:
        gen.emit(f"{dest} = {gen.reg(i.rm, size)}")
    src = gen.reg(i.reg, size)
    if size == 8:
        gen.add64(dest, src, False)
        gen.set_flags(CC_ADD, size, dest, src, "")
    else:
        gen.set_flags(CC_ADD, size, dest, src, f"({dest} + {src}) & {MASK[size]:#x}")
    if i.is_mem:
        gen.store("a", size, f"fr{k}")
        gen.set_reg(i.reg, size, dest)
    else:  # the handler's order: with one register for both, the sum is what stays
        gen.set_reg(i.reg, size, dest)
        gen.set_reg(i.rm, size, f"fr{k}")


def cli(gen: BlockCodegen, i: Insn) -> None:
    gen.may_fault()
    gen.emit(f"if s.cr0 & 1 and s.cpl > (s.rflags & {IOPL:#x}) >> 12:")
    gen.emit(f"    raise GuestFault({GP}, 0)")
    gen.emit(f"s.rflags &= {~IF:#x}")


def mov_rm_sreg(gen: BlockCodegen, i: Insn) -> None:
    if i.raw_reg > 5:
        raise Untranslatable("no such segment register: #UD through the handler")
    selector = f"s.segs[{i.raw_reg}].selector"
    if i.is_mem:
        gen.store(gen.address(i), 2, selector)
    else:
        gen.set_reg(i.rm, i.opsize, selector)


def leave(gen: BlockCodegen, i: Insn) -> None:
    """RSP = RBP, then pop RBP (the epilogue of every function with a frame pointer)."""
    if gen.bits != 64 or i.opsize != 8:
        raise Untranslatable("leave outside 64-bit mode, or with a 16-bit operand")
    gen.uses_stack = True
    value = gen.load("r5", 8)
    gen.arith64("sp", "r5", "+", "8")
    gen.set_reg(4, 8, "sp")
    gen.set_reg(5, 8, value)


SYSTEM_EMITTERS: Dict[Callable, Callable[[BlockCodegen, Insn], None]] = {
    system.rdtsc: rdtsc, sysregs.fence_or_clflush: fence, sysregs.serialize: serialize, mov.bswap: bswap, mov.cmpxchg: cmpxchg,
    bit_insns.bt_imm: bt_imm, bit_insns.bt_reg: bt_reg, mov.xadd: xadd, system.cli: cli,
    mov.mov_rm_sreg: mov_rm_sreg, stack.leave: leave,
}

"""SSE/SSE2 data movement, shuffles and masks, and the operand access the other SSE families share.

XMM registers are 128-bit Python integers in ``CpuState.xmm``. The mandatory prefix picks the
instruction: none (packed single / MMX), 66 (packed double / XMM integer), F3 (scalar single),
F2 (scalar double); F2/F3 win over 66. Only the XMM forms are implemented: the MMX register
forms of the integer instructions raise #UD (no x86-64 kernel or libc baseline code uses them).
"""

from __future__ import annotations

import struct
from typing import List

from ..decoder import IMM_B, MEM_ONLY, Insn, register
from ..faults import GP, NM, UD, GuestFault
from ..operands import MASK, ea, get_reg, read_rm, set_reg, write_rm

MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
MASK128 = (1 << 128) - 1
CR0_EM, CR0_TS = 1 << 2, 1 << 3
CR4_OSFXSR = 1 << 9
NONE, P66, PF3, PF2 = 0, 1, 2, 3
_LANE_FORMAT = {1: "<16B", 2: "<8H", 4: "<4I", 8: "<2Q"}
_SIGNED_FORMAT = {1: "<16b", 2: "<8h", 4: "<4i", 8: "<2q"}


def prefix(i: Insn) -> int:
    if i.rep == 0xF3:
        return PF3
    if i.rep == 0xF2:
        return PF2
    return P66 if i.pfx66 else NONE


def check(cpu) -> None:
    """#UD without CR4.OSFXSR or with CR0.EM, #NM with CR0.TS, as every SSE instruction."""
    s = cpu.s
    if s.cr0 & CR0_EM or not s.cr4 & CR4_OSFXSR:
        raise GuestFault(UD)
    if s.cr0 & CR0_TS:
        raise GuestFault(NM)


def read128(cpu, addr: int, aligned: bool) -> int:
    if aligned and addr & 0xF:
        raise GuestFault(GP, 0)
    low = cpu.mmu.read(addr, 8)
    return low | (cpu.mmu.read(addr + 8, 8) << 64)


def write128(cpu, addr: int, value: int, aligned: bool) -> None:
    if aligned and addr & 0xF:
        raise GuestFault(GP, 0)
    cpu.mmu.check_write(addr, 16)
    cpu.mmu.write(addr, 8, value & MASK64)
    cpu.mmu.write(addr + 8, 8, value >> 64)


def src128(cpu, i: Insn, aligned: bool = True) -> int:
    """The xmm/m128 source; legacy-SSE memory operands must be 16-byte aligned."""
    if i.is_mem:
        return read128(cpu, ea(cpu, i), aligned)
    return cpu.s.xmm[i.rm]


def src_low(cpu, i: Insn, size: int) -> int:
    """The low ``size`` bytes of xmm, or an m32/m64 operand (scalar forms: no alignment)."""
    if i.is_mem:
        return cpu.mmu.read(ea(cpu, i), size)
    return cpu.s.xmm[i.rm] & MASK[size]


def lanes(value: int, width: int) -> tuple:
    return struct.unpack(_LANE_FORMAT[width], value.to_bytes(16, "little"))


def signed_lanes(value: int, width: int) -> tuple:
    return struct.unpack(_SIGNED_FORMAT[width], value.to_bytes(16, "little"))


def join(values: List[int], width: int) -> int:
    mask = MASK[width]
    return int.from_bytes(struct.pack(_LANE_FORMAT[width], *[v & mask for v in values]), "little")


def _xmm_only(i: Insn) -> None:
    if prefix(i) != P66:
        raise GuestFault(UD)  # MMX register forms are not implemented


def _register_operand(i: Insn) -> None:
    if i.is_mem:
        raise GuestFault(UD)


# --- moves -------------------------------------------------------------------------------------
def mov_load(cpu, i: Insn) -> None:
    """0F 10 / 0F 28 / 0F 6F: movups movupd movss movsd / movaps movapd / movdqa movdqu."""
    check(cpu)
    s = cpu.s
    kind = prefix(i)
    op = i.op
    if op == 0x110 and kind >= PF3:
        size = 4 if kind == PF3 else 8
        value = src_low(cpu, i, size)
        if i.is_mem:
            s.xmm[i.reg] = value  # a memory source zeroes the rest of the register
        else:
            s.xmm[i.reg] = (s.xmm[i.reg] & ~MASK[size] & MASK128) | value
        return
    if op == 0x16F and kind == NONE:
        raise GuestFault(UD)
    aligned = op == 0x128 or (op == 0x16F and kind == P66)
    s.xmm[i.reg] = src128(cpu, i, aligned)


def mov_store(cpu, i: Insn) -> None:
    """0F 11 / 0F 29 / 0F 7F / 0F 2B / 0F E7: the register-to-r/m moves."""
    check(cpu)
    s = cpu.s
    kind = prefix(i)
    op = i.op
    value = s.xmm[i.reg]
    if op == 0x111 and kind >= PF3:
        size = 4 if kind == PF3 else 8
        if i.is_mem:
            cpu.mmu.write(ea(cpu, i), size, value & MASK[size])
        else:
            s.xmm[i.rm] = (s.xmm[i.rm] & ~MASK[size] & MASK128) | (value & MASK[size])
        return
    if op == 0x17F and kind == NONE or op == 0x1E7 and kind != P66:
        raise GuestFault(UD)
    aligned = op in (0x129, 0x12B, 0x1E7) or (op == 0x17F and kind == P66)
    if i.is_mem:
        write128(cpu, ea(cpu, i), value, aligned)
    else:
        s.xmm[i.rm] = value


def mov_low_high(cpu, i: Insn) -> None:
    """0F 12/13/16/17: movlps movlpd movhlps (12, 13) and movhps movhpd movlhps (16, 17)."""
    check(cpu)
    s = cpu.s
    if prefix(i) >= PF3:
        raise GuestFault(UD)  # movsldup/movshdup/movddup are SSE3
    high = i.op in (0x116, 0x117)
    if i.op in (0x113, 0x117):  # store form: memory only
        if not i.is_mem:
            raise GuestFault(UD)
        value = s.xmm[i.reg] >> 64 if high else s.xmm[i.reg] & MASK64
        cpu.mmu.write(ea(cpu, i), 8, value)
        return
    if i.is_mem:
        value = cpu.mmu.read(ea(cpu, i), 8)
    elif prefix(i) == P66:
        raise GuestFault(UD)
    else:  # movhlps takes the source's high half, movlhps its low half
        value = s.xmm[i.rm] & MASK64 if high else s.xmm[i.rm] >> 64
    dest = s.xmm[i.reg]
    s.xmm[i.reg] = (dest & MASK64) | (value << 64) if high else (dest & ~MASK64 & MASK128) | value


def movd_to_xmm(cpu, i: Insn) -> None:
    """66 0F 6E: movd/movq xmm, r/m32/64 (zero-extended to 128 bits)."""
    check(cpu)
    _xmm_only(i)
    size = 8 if i.rex & 8 else 4
    cpu.s.xmm[i.reg] = read_rm(cpu, i, size)


def movd_from_xmm(cpu, i: Insn) -> None:
    """66 0F 7E: movd/movq r/m32/64, xmm; F3 0F 7E: movq xmm, xmm/m64."""
    check(cpu)
    s = cpu.s
    kind = prefix(i)
    if kind == PF3:
        s.xmm[i.reg] = src_low(cpu, i, 8)
        return
    _xmm_only(i)
    size = 8 if i.rex & 8 else 4
    write_rm(cpu, i, size, s.xmm[i.reg] & MASK[size])


def movq_store(cpu, i: Insn) -> None:
    """66 0F D6: movq xmm/m64, xmm (a register destination's high half is zeroed)."""
    check(cpu)
    _xmm_only(i)
    value = cpu.s.xmm[i.reg] & MASK64
    if i.is_mem:
        cpu.mmu.write(ea(cpu, i), 8, value)
    else:
        cpu.s.xmm[i.rm] = value


def movnti(cpu, i: Insn) -> None:
    """0F C3: a non-temporal store of a general register (SSE2)."""
    if prefix(i) != NONE:
        raise GuestFault(UD)
    size = 8 if i.opsize == 8 else 4
    cpu.mmu.write(ea(cpu, i), size, get_reg(cpu.s.regs, i.reg, size))


def pmovmskb(cpu, i: Insn) -> None:
    """66 0F D7: the top bit of each byte into a general register."""
    check(cpu)
    _register_operand(i)
    _xmm_only(i)
    value = cpu.s.xmm[i.rm]
    mask = 0
    for n in range(16):
        mask |= ((value >> (8 * n + 7)) & 1) << n
    set_reg(cpu.s.regs, i.reg, 8 if i.bits == 64 else 4, mask)


def movmsk(cpu, i: Insn) -> None:
    """0F 50: movmskps / 66 0F 50: movmskpd."""
    check(cpu)
    _register_operand(i)
    kind = prefix(i)
    if kind >= PF3:
        raise GuestFault(UD)
    value = cpu.s.xmm[i.rm]
    if kind == P66:
        mask = (value >> 63 & 1) | (value >> 126 & 2)
    else:
        mask = sum(((value >> (32 * n + 31)) & 1) << n for n in range(4))
    set_reg(cpu.s.regs, i.reg, 8 if i.bits == 64 else 4, mask)


def pextrw(cpu, i: Insn) -> None:
    check(cpu)
    _register_operand(i)
    _xmm_only(i)
    word = (cpu.s.xmm[i.rm] >> (16 * (i.imm & 7))) & 0xFFFF
    set_reg(cpu.s.regs, i.reg, 8 if i.bits == 64 else 4, word)


def pinsrw(cpu, i: Insn) -> None:
    check(cpu)
    _xmm_only(i)
    word = read_rm(cpu, i, 2)
    shift = 16 * (i.imm & 7)
    s = cpu.s
    s.xmm[i.reg] = (s.xmm[i.reg] & ~(0xFFFF << shift)) | (word << shift)


# --- shuffles ----------------------------------------------------------------------------------
def pshuf(cpu, i: Insn) -> None:
    """0F 70: pshufd (66), pshufhw (F3), pshuflw (F2)."""
    check(cpu)
    kind = prefix(i)
    if kind == NONE:
        raise GuestFault(UD)
    src = src128(cpu, i)
    order = i.imm
    if kind == P66:
        words = lanes(src, 4)
        result = join([words[(order >> (2 * n)) & 3] for n in range(4)], 4)
    else:
        words = lanes(src, 2)
        base = 4 if kind == PF3 else 0
        picked = [words[base + ((order >> (2 * n)) & 3)] for n in range(4)]
        kept = list(words)
        kept[base:base + 4] = picked
        result = join(kept, 2)
    cpu.s.xmm[i.reg] = result


def shufp(cpu, i: Insn) -> None:
    """0F C6: shufps / 66 0F C6: shufpd."""
    check(cpu)
    kind = prefix(i)
    if kind >= PF3:
        raise GuestFault(UD)
    s = cpu.s
    dest, src = s.xmm[i.reg], src128(cpu, i)
    order = i.imm
    if kind == P66:
        a, b = lanes(dest, 8), lanes(src, 8)
        s.xmm[i.reg] = join([a[order & 1], b[(order >> 1) & 1]], 8)
    else:
        a, b = lanes(dest, 4), lanes(src, 4)
        s.xmm[i.reg] = join([a[order & 3], a[(order >> 2) & 3], b[(order >> 4) & 3],
                             b[(order >> 6) & 3]], 4)


def unpck_float(cpu, i: Insn) -> None:
    """0F 14/15: unpcklps/unpckhps; with 66, unpcklpd/unpckhpd."""
    check(cpu)
    kind = prefix(i)
    if kind >= PF3:
        raise GuestFault(UD)
    width = 8 if kind == P66 else 4
    _interleave(cpu, i, width, high=i.op == 0x115)


def _interleave(cpu, i: Insn, width: int, high: bool) -> None:
    s = cpu.s
    a, b = lanes(s.xmm[i.reg], width), lanes(src128(cpu, i), width)
    half = len(a) // 2
    start = half if high else 0
    out: List[int] = []
    for n in range(start, start + half):
        out.append(a[n])
        out.append(b[n])
    s.xmm[i.reg] = join(out, width)


def punpck(cpu, i: Insn) -> None:
    """66 0F 60-62, 68-6A, 6C, 6D: interleave the low or high halves by byte … quadword."""
    check(cpu)
    _xmm_only(i)
    op = i.op & 0xFF
    if op >= 0x6C:
        width, high = 8, op == 0x6D
    else:
        width, high = 1 << (op & 3), op >= 0x68
    _interleave(cpu, i, width, high)


def byte_shift(cpu, i: Insn) -> None:
    """66 0F 73 /3 psrldq, /7 pslldq (by bytes); /2 psrlq, /6 psllq (by bits)."""
    check(cpu)
    _register_operand(i)
    _xmm_only(i)
    s = cpu.s
    count = i.imm
    reg = i.raw_reg
    value = s.xmm[i.rm]
    if reg == 3:
        s.xmm[i.rm] = value >> (8 * count) if count < 16 else 0
    elif reg == 7:
        s.xmm[i.rm] = (value << (8 * count)) & MASK128 if count < 16 else 0
    elif reg == 2 or reg == 6:
        halves = lanes(value, 8)
        if count > 63:
            s.xmm[i.rm] = 0
        elif reg == 2:
            s.xmm[i.rm] = join([h >> count for h in halves], 8)
        else:
            s.xmm[i.rm] = join([h << count for h in halves], 8)
    else:
        raise GuestFault(UD)


def _register() -> None:
    for op in (0x110, 0x128, 0x16F):
        register(op, mov_load, modrm=True)
    for op in (0x111, 0x129, 0x17F):
        register(op, mov_store, modrm=True)
    register(0x12B, mov_store, modrm=True, flags=MEM_ONLY)
    register(0x1E7, mov_store, modrm=True, flags=MEM_ONLY)
    for op in (0x112, 0x113, 0x116, 0x117):
        register(op, mov_low_high, modrm=True)
    register(0x114, unpck_float, modrm=True)
    register(0x115, unpck_float, modrm=True)
    register(0x16E, movd_to_xmm, modrm=True)
    register(0x17E, movd_from_xmm, modrm=True)
    register(0x1D6, movq_store, modrm=True)
    register(0x1C3, movnti, modrm=True, flags=MEM_ONLY)
    register(0x1D7, pmovmskb, modrm=True)
    register(0x150, movmsk, modrm=True)
    register(0x1C5, pextrw, modrm=True, imm=IMM_B)
    register(0x1C4, pinsrw, modrm=True, imm=IMM_B)
    register(0x170, pshuf, modrm=True, imm=IMM_B)
    register(0x1C6, shufp, modrm=True, imm=IMM_B)
    for op in (0x160, 0x161, 0x162, 0x168, 0x169, 0x16A, 0x16C, 0x16D):
        register(op, punpck, modrm=True)
    for reg in (2, 3, 6, 7):
        register(0x173, byte_shift, reg=reg, imm=IMM_B)


_register()

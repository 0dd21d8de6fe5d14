"""Table-driven x86 instruction decoder.

One table, :data:`OPCODES`, keyed by opcode (one-byte opcodes 0x00-0xFF, 0x0F xx at
0x100+xx, 0x0F 0x38 xx at 0x200+xx, 0x0F 0x3A xx at 0x300+xx), holds an :class:`OpSpec` per
opcode: whether it has a ModRM byte, its immediate, its operand-size rules and the handler.
ModRM-extended groups (0x80, 0xF7, 0xFF, 0x0F01 …) hold one spec per ``reg`` field instead.
Instruction families in ``insns/`` fill the table with :func:`register`.

:func:`decode` is a pure function of (bytes, position, rip, code width): it returns an
:class:`Insn` with every operand resolved to register numbers, displacement and immediates.
"""

from __future__ import annotations

import operator
from typing import Callable, List, Optional

from .faults import GP, UD, GuestFault
from .state import signed64, unsigned64

# Immediate kinds.
IMM_NONE = 0
IMM_B = 1  # 8-bit, zero-extended
IMM_BS = 2  # 8-bit, sign-extended to the operand size
IMM_W = 3  # 16-bit
IMM_Z = 4  # 16 or 32 bits by operand size; 32 sign-extended for 64-bit operands
IMM_V = 5  # 16, 32 or 64 bits by operand size (mov r, imm64)
IMM_REL8 = 6  # rel8 jump: imm holds the target
IMM_RELZ = 7  # rel16/rel32 jump: imm holds the target
IMM_MOFFS = 8  # an address of the address size (mov al, [moffs])
IMM_FAR = 9  # ptr16:16 / ptr16:32: imm = offset, imm2 = selector
IMM_W_B = 10  # enter: imm = iw, imm2 = ib

# Spec flags.
BYTE = 1 << 0  # 8-bit operands (reg and r/m)
D64 = 1 << 1  # default operand size 64 in long mode (push, pop, near branches)
F64 = 1 << 2  # operand size forced to 64 in long mode (66 ignored)
I64 = 1 << 3  # invalid in 64-bit mode
END = 1 << 4  # ends a translated block (branches, mode changes, halt)
REG_OP = 1 << 5  # register number in the low 3 bits of the opcode
RM8 = 1 << 6  # r/m operand is 8-bit, reg operand takes the operand size (movzx)
RM16 = 1 << 7  # r/m operand is 16-bit (movzx r, r/m16)
MEM_ONLY = 1 << 8  # r/m must be memory (lea, lgdt); a register form is #UD
REG_ONLY = 1 << 9  # r/m must be a register (mov cr, movhlps)
LOCKABLE = 1 << 10  # a LOCK prefix is allowed (with a memory destination)

Handler = Callable[..., None]


class OpSpec:
    __slots__ = ("handler", "modrm", "imm", "flags", "group", "name", "index")

    def __init__(self, handler: Optional[Handler], modrm: bool, imm: int, flags: int,
                 name: str) -> None:
        self.handler = handler
        self.modrm = modrm
        self.imm = imm
        self.flags = flags
        self.group: Optional[List[Optional["OpSpec"]]] = None
        self.name = name
        self.index = len(SPECS)
        SPECS.append(self)

    def __reduce__(self):
        # A pickled instruction (sent to the compile helper) names its spec by its place in
        # SPECS, which every process that imported the instruction modules fills alike.
        return spec_at, (self.index,)


#: Every OpSpec, in the order the instruction modules registered them.
SPECS: List[OpSpec] = []


def spec_at(index: int) -> OpSpec:
    """The OpSpec at ``index`` in SPECS (how a pickled instruction finds its spec)."""
    return SPECS[index]


OPCODES: List[Optional[OpSpec]] = [None] * 0x400


def register(opcode: int, handler: Handler, modrm: bool = False, imm: int = IMM_NONE,
             flags: int = 0, reg: Optional[int] = None, name: str = "") -> None:
    """Put ``handler`` in the table at ``opcode`` (or at ``opcode``/``reg`` for a group)."""
    spec = OpSpec(handler, modrm or reg is not None, imm, flags, name or handler.__name__)
    if reg is None:
        if OPCODES[opcode] is not None:
            raise ValueError(f"opcode {opcode:#x} registered twice")
        OPCODES[opcode] = spec
        return
    holder = OPCODES[opcode]
    if holder is None:
        holder = OpSpec(None, True, IMM_NONE, 0, f"group {opcode:#x}")
        holder.group = [None] * 8
        OPCODES[opcode] = holder
    assert holder.group is not None
    if holder.group[reg] is not None:
        raise ValueError(f"opcode {opcode:#x} /{reg} registered twice")
    holder.group[reg] = spec


class Insn:
    """One decoded instruction, operands resolved."""

    __slots__ = ("addr", "length", "next_rip", "op", "spec", "handler", "opsize", "adsize",
                 "seg", "rep", "lock", "rex", "pfx66", "mod", "reg", "rm", "is_mem", "base",
                 "index", "scale", "disp", "imm", "imm2", "bits", "raw_reg")

    def __reduce__(self):
        # For the compile helper: its fields as one tuple, not the default dict of its slots
        # (a region pickled in 32 us instead of 54 at the median, in the Debian boot).
        return insn_from_fields, (_insn_fields(self),)

    def __repr__(self) -> str:
        return (f"Insn({self.spec.name if self.spec else '?'} @ {self.addr:#x} len={self.length} "
                f"op={self.op:#x} osz={self.opsize} asz={self.adsize} reg={self.reg} rm={self.rm} "
                f"mem={self.is_mem} base={self.base} idx={self.index} disp={self.disp:#x} "
                f"imm={self.imm:#x})")


_insn_fields = operator.attrgetter(*Insn.__slots__)


def insn_from_fields(fields: tuple) -> Insn:
    """The instruction pickled as ``fields`` (Insn.__reduce__)."""
    insn = Insn()
    for name, value in zip(Insn.__slots__, fields):
        setattr(insn, name, value)
    return insn


MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
_SEG_PREFIX = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}
# 16-bit ModRM addressing: (base, index) per r/m value; 6 with mod 0 is disp16.
_RM16 = ((3, 6), (3, 7), (5, 6), (5, 7), (6, -1), (7, -1), (5, -1), (3, -1))
SEG_DS = 3
SEG_SS = 2
MAX_INSN_LENGTH = 15


def _sext(value: int, bits: int) -> int:
    sign = 1 << (bits - 1)
    return (value & (sign - 1)) - (value & sign)


def _unsigned(value: int, size: int) -> int:
    """A sign-extended immediate as the unsigned ``size``-byte operand the handlers take: at
    8 bytes a long integer on PyPy only when it has to be (2**63 and up), not for all."""
    return unsigned64(value) if size == 8 else value & MASKS[size]


def _byte_reg(num: int, rex: int) -> int:
    """Byte register number: without REX, 4-7 name AH, CH, DH, BH (stored as 16-19)."""
    if not rex and 4 <= num < 8:
        return num + 12
    return num


def decode(buf: bytes, pos: int, rip: int, bits: int) -> Insn:
    """Decode the instruction at ``buf[pos]``, which lives at ``rip`` in a ``bits``-bit segment.

    Raises :class:`GuestFault` (#UD for an undefined opcode, #GP past 15 bytes) and
    IndexError when ``buf`` ends inside the instruction (the caller fetches more or faults).
    """
    start = pos
    seg = -1
    rep = 0
    lock = False
    pfx66 = False
    pfx67 = False
    rex = 0
    while True:
        b = buf[pos]
        if b == 0x66:
            pfx66 = True
        elif b == 0x67:
            pfx67 = True
        elif b in _SEG_PREFIX:
            seg = _SEG_PREFIX[b]
        elif b == 0xF0:
            lock = True
        elif b == 0xF3 or b == 0xF2:
            rep = b
        elif bits == 64 and 0x40 <= b <= 0x4F:
            # REX only counts right before the opcode: a legacy prefix after it clears it.
            rex = b
            pos += 1
            if pos - start >= MAX_INSN_LENGTH:
                raise GuestFault(GP, 0)
            continue
        else:
            break
        rex = 0
        pos += 1
        if pos - start >= MAX_INSN_LENGTH:
            raise GuestFault(GP, 0)
    pos += 1
    op = b
    if op == 0x0F:
        op = 0x100 | buf[pos]
        pos += 1
        if op == 0x138 or op == 0x13A:
            op = (0x200 if op == 0x138 else 0x300) | buf[pos]
            pos += 1
    spec = OPCODES[op]
    if spec is None:
        raise GuestFault(UD)
    flags = spec.flags
    if flags & I64 and bits == 64:
        raise GuestFault(UD)

    i = Insn()
    i.addr = rip
    i.op = op
    i.rep = rep
    i.lock = lock
    i.rex = rex
    i.pfx66 = pfx66
    i.bits = bits
    i.is_mem = False
    i.base = -1
    i.index = -1
    i.scale = 0
    i.disp = 0
    i.imm = 0
    i.imm2 = 0
    i.mod = 3
    i.reg = 0
    i.rm = 0
    i.raw_reg = 0
    if bits == 64:
        adsize = 4 if pfx67 else 8
    elif bits == 32:
        adsize = 2 if pfx67 else 4
    else:
        adsize = 4 if pfx67 else 2
    i.adsize = adsize

    rip_relative = False
    if spec.modrm:
        modrm = buf[pos]
        pos += 1
        mod = modrm >> 6
        reg = (modrm >> 3) & 7
        rm = modrm & 7
        i.raw_reg = reg
        if spec.group is not None:
            sub = spec.group[reg]
            if sub is None:
                raise GuestFault(UD)
            spec = sub
            flags |= sub.flags
        i.mod = mod
        if mod == 3:
            if flags & MEM_ONLY:
                raise GuestFault(UD)
            i.rm = rm | ((rex & 1) << 3)
        elif flags & REG_ONLY:
            # mov to/from CR/DR ignore the mod field: always the register form.
            i.mod = 3
            i.rm = rm | ((rex & 1) << 3)
        else:
            i.is_mem = True
            default_seg = SEG_DS
            if adsize == 2:
                if mod == 0 and rm == 6:
                    i.disp = buf[pos] | (buf[pos + 1] << 8)
                    pos += 2
                else:
                    i.base, i.index = _RM16[rm]
                    if i.base == 5:
                        default_seg = SEG_SS
                    if mod == 1:
                        i.disp = _sext(buf[pos], 8) & 0xFFFF
                        pos += 1
                    elif mod == 2:
                        i.disp = buf[pos] | (buf[pos + 1] << 8)
                        pos += 2
            else:
                if rm == 4:
                    sib = buf[pos]
                    pos += 1
                    scale = sib >> 6
                    index = ((sib >> 3) & 7) | ((rex & 2) << 2)
                    base = sib & 7
                    if index != 4:
                        i.index = index
                        i.scale = scale
                    if base == 5 and mod == 0:
                        i.disp = _sext(int.from_bytes(buf[pos:pos + 4], "little"), 32)
                        if pos + 4 > len(buf):
                            raise IndexError("instruction runs past the fetched bytes")
                        pos += 4
                    else:
                        i.base = base | ((rex & 1) << 3)
                        if base == 4 or base == 5:
                            default_seg = SEG_SS
                elif rm == 5 and mod == 0:
                    if pos + 4 > len(buf):
                        raise IndexError("instruction runs past the fetched bytes")
                    i.disp = _sext(int.from_bytes(buf[pos:pos + 4], "little"), 32)
                    pos += 4
                    rip_relative = bits == 64
                else:
                    i.base = rm | ((rex & 1) << 3)
                    if rm == 5:
                        default_seg = SEG_SS
                if mod == 1:
                    i.disp = _sext(buf[pos], 8)
                    pos += 1
                elif mod == 2:
                    if pos + 4 > len(buf):
                        raise IndexError("instruction runs past the fetched bytes")
                    i.disp = _sext(int.from_bytes(buf[pos:pos + 4], "little"), 32)
                    pos += 4
            if seg < 0:
                seg = default_seg
        i.reg = reg | ((rex & 4) << 1)
    elif flags & REG_OP:
        i.reg = (op & 7) | ((rex & 1) << 3)

    if lock and not (flags & LOCKABLE and i.is_mem):
        raise GuestFault(UD)

    # Operand size.
    if flags & BYTE:
        opsize = 1
    elif bits == 64:
        if flags & F64:
            opsize = 8
        elif rex & 8:
            opsize = 8
        elif flags & D64:
            opsize = 2 if pfx66 else 8
        else:
            opsize = 2 if pfx66 else 4
    elif bits == 32:
        opsize = 2 if pfx66 else 4
    else:
        opsize = 4 if pfx66 else 2
    i.opsize = opsize
    if flags & BYTE:
        i.reg = _byte_reg(i.reg, rex)
        if not i.is_mem:
            i.rm = _byte_reg(i.rm, rex)
    elif flags & RM8 and not i.is_mem:
        i.rm = _byte_reg(i.rm, rex)

    # Immediates.
    kind = spec.imm
    if kind != IMM_NONE:
        if kind == IMM_B:
            i.imm = buf[pos]
            pos += 1
        elif kind == IMM_BS:
            i.imm = _unsigned(_sext(buf[pos], 8), opsize)
            pos += 1
        elif kind == IMM_W:
            i.imm = buf[pos] | (buf[pos + 1] << 8)
            pos += 2
        elif kind == IMM_Z or (kind == IMM_V and opsize != 8):
            n = 2 if opsize == 2 else 4
            if pos + n > len(buf):
                raise IndexError("instruction runs past the fetched bytes")
            i.imm = _unsigned(_sext(int.from_bytes(buf[pos:pos + n], "little"), n * 8), opsize)
            pos += n
        elif kind == IMM_V:
            if pos + 8 > len(buf):
                raise IndexError("instruction runs past the fetched bytes")
            i.imm = int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif kind == IMM_REL8:
            rel = _sext(buf[pos], 8)
            pos += 1
            i.imm = rel
        elif kind == IMM_RELZ:
            n = 2 if opsize == 2 else 4
            if pos + n > len(buf):
                raise IndexError("instruction runs past the fetched bytes")
            i.imm = _sext(int.from_bytes(buf[pos:pos + n], "little"), n * 8)
            pos += n
        elif kind == IMM_MOFFS:
            if pos + adsize > len(buf):
                raise IndexError("instruction runs past the fetched bytes")
            i.disp = int.from_bytes(buf[pos:pos + adsize], "little")
            pos += adsize
            i.is_mem = True
            if seg < 0:
                seg = SEG_DS
        elif kind == IMM_FAR:
            n = 2 if opsize == 2 else 4
            if pos + n + 2 > len(buf):
                raise IndexError("instruction runs past the fetched bytes")
            i.imm = int.from_bytes(buf[pos:pos + n], "little")
            i.imm2 = buf[pos + n] | (buf[pos + n + 1] << 8)
            pos += n + 2
        elif kind == IMM_W_B:
            i.imm = buf[pos] | (buf[pos + 1] << 8)
            i.imm2 = buf[pos + 2]
            pos += 3

    length = pos - start
    if length > MAX_INSN_LENGTH:
        raise GuestFault(GP, 0)
    i.length = length
    if bits == 64:
        # 64-bit code addresses are in the signed register form (see .state).
        next_rip = signed64(rip + length)
    else:
        next_rip = (rip + length) & (0xFFFF_FFFF if bits == 32 else 0xFFFF)
    i.next_rip = next_rip
    if kind == IMM_REL8 or kind == IMM_RELZ:
        i.imm = signed64(next_rip + i.imm) if opsize == 8 else (next_rip + i.imm) & MASKS[opsize]
    if rip_relative:
        i.disp += next_rip
    if i.is_mem:
        # A 64-bit displacement in the signed form, like the registers it is added to.
        i.disp = signed64(i.disp) if adsize == 8 else i.disp & MASKS[adsize]
    if seg < 0 and bits != 64:
        seg = SEG_DS
    # In 64-bit mode only FS and GS have a base; -1 means "no segment base".
    if bits == 64 and seg < 4:
        seg = -1
    i.seg = seg
    i.spec = spec
    i.handler = spec.handler
    return i

"""The snippet generator: one integer instruction (or a flag producer/consumer pair) per
snippet, with its initial state and the RFLAGS bits the manuals leave undefined for it.

Covered: ALU (all eight ops and test, every operand form), inc/dec/neg/not, shifts and
rotates (counts 0, 1, width-1, width, > width, by 1/imm8/CL), shld/shrd, mul/imul (1, 2, 3
operands), div/idiv (#DE on zero and overflow), bt/bts/btr/btc, bsf/bsr, popcnt, setcc,
cmovcc, xchg, cmpxchg, xadd, mov/movzx/movsx/movsxd, lea, bswap, cbw..cqo, push/pop,
pushf/popf, the string instructions with and without rep and with both DF values, and
#UD; at 8/16/32/64 bits, with REX registers, 32-bit addressing and misaligned,
page-crossing, read-only, absent and non-canonical memory operands.

Undefined flags are the union of what Intel's SDM and AMD's APM leave undefined, so the
check holds on either vendor's CPU.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, NamedTuple, Tuple

from .layout import DATA, DATA_RO, DATA_SIZE, GUARD, PAGE, SEEDED_REGIONS
from .operands import HIGH8, NAMES, REG64, RSP, SUFFIX, SnippetBuilder, edge_value

CF, PF, AF, ZF, SF, OF, DF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800, 0x400
ARITH = CF | PF | AF | ZF | SF | OF
SIZES = (1, 2, 4, 8)
ALU_OPS = ("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp")
CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")


class Snippet(NamedTuple):
    """Code under test (without its final hlt) and the state it starts from."""

    asm: str
    gprs: Dict[str, int]
    rflags: int
    image_seed: int  # seeds the bytes of SEEDED_REGIONS
    patches: Tuple[Tuple[int, bytes], ...]  # then these bytes are written over them
    undefined_flags: int = 0
    undefined_regs: Tuple[str, ...] = ()
    # Also undefined when the snippet faults: a repeated cmps/scas interrupted by a fault
    # part-way leaves the flags of the last finished iteration on Intel and the software
    # CPU, but AMD reports the flags from before the instruction.
    fault_undefined_flags: int = 0
    # Registers whose bits 32-63 are not compared (only the low half is defined).
    undefined_high_regs: Tuple[str, ...] = ()


def seeded_image(snippet: Snippet) -> Dict[int, bytes]:
    """The memory a snippet starts from: seeded random pages, then its planted values."""
    rng = random.Random(snippet.image_seed)
    image = {addr: bytearray(rng.getrandbits(8 * size).to_bytes(size, "little"))
             for addr, size in SEEDED_REGIONS}
    for addr, data in snippet.patches:
        for region, buf in image.items():
            start = addr - region
            if 0 <= start and start + len(data) <= len(buf):
                buf[start:start + len(data)] = data
    return {addr: bytes(buf) for addr, buf in image.items()}


class _Parts(NamedTuple):
    asm: str
    undefined_flags: int = 0
    undefined_regs: Tuple[str, ...] = ()
    fault_undefined_flags: int = 0
    undefined_high_regs: Tuple[str, ...] = ()


def _size(rng: random.Random) -> int:
    return rng.choice(SIZES)


def _rm(b: SnippetBuilder, size: int, memory_bias: float = 0.4):
    """A register or memory r/m operand: (text, is_memory)."""
    if b.rng.random() < memory_bias:
        return b.mem(size).text, True
    return b.reg(size), False


def _alu(b: SnippetBuilder) -> _Parts:
    rng = b.rng
    op = rng.choice(ALU_OPS + ("test",))
    size = _size(rng)
    s = SUFFIX[size]
    undefined = AF if op in ("and", "or", "xor", "test") else 0
    lock = "lock " if op not in ("cmp", "test") and rng.random() < 0.1 else ""
    form = rng.randrange(5)
    if form == 0:  # register to register, either encoding direction
        direction = rng.choice(("", "{load} ", "{store} "))
        return _Parts(f"{direction}{op}{s} {b.reg(size)}, {b.reg(size)}", undefined)
    if form == 1 and op != "test":  # memory source
        return _Parts(f"{op}{s} {b.mem(size).text}, {b.reg(size)}", undefined)
    if form <= 2:  # memory destination
        mem = b.mem(size, kind="data" if lock else "")
        prefix = lock if lock and mem.address % size == 0 else ""
        return _Parts(f"{prefix}{op}{s} {b.reg(size)}, {mem.text}", undefined)
    imm = edge_value(rng, min(size, 4))
    if size == 8 and imm >= 0x8000_0000:
        imm -= 1 << 32  # imm32 sign-extends to 64 bits
    if form == 3 and rng.random() < 0.5:
        acc = {1: "%al", 2: "%ax", 4: "%eax", 8: "%rax"}[size]
        b.set(0, size, edge_value(rng, size))
        return _Parts(f"{op}{s} ${imm}, {acc}", undefined)
    dest, _ = _rm(b, size)
    return _Parts(f"{op}{s} ${imm}, {dest}", undefined)


def _unary(b: SnippetBuilder) -> _Parts:
    op = b.rng.choice(("inc", "dec", "neg", "not"))
    size = _size(b.rng)
    dest, _ = _rm(b, size)
    return _Parts(f"{op}{SUFFIX[size]} {dest}")


def _shift_count(rng: random.Random, size: int) -> int:
    bits = 8 * size
    return rng.choice((0, 1, 1, 2, bits - 1, bits, bits + 1, 31, 32, 33, 63, 64, 65,
                       rng.randrange(256)))


def shift_undefined(op: str, size: int, count: int) -> Tuple[int, bool]:
    """(undefined flags, result undefined) of a shift/rotate by ``count`` (before masking)."""
    bits = 8 * size
    masked = count & (0x3F if size == 8 else 0x1F)
    if masked == 0:
        return 0, False
    undefined = 0 if masked == 1 else OF
    if op in ("shl", "sal", "shr", "sar", "shld", "shrd"):
        undefined |= AF
    if op in ("shl", "sal", "shr") and masked >= bits:
        undefined |= CF
    if op in ("shld", "shrd") and masked > bits:
        return ARITH, True
    return undefined, False


def _shift(b: SnippetBuilder) -> _Parts:
    rng = b.rng
    op = rng.choice(("rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar"))
    size = _size(rng)
    count = _shift_count(rng, size)
    how = rng.randrange(3)
    if how == 0:
        count = 1
        dest, _ = _rm(b, size)
        text = f"{op}{SUFFIX[size]} {dest}"  # the D0/D1 by-one encoding
    elif how == 1:
        dest, _ = _rm(b, size)
        text = f"{op}{SUFFIX[size]} ${count & 0xFF}, {dest}"
    else:
        b.fix(1, (b.regs[1] & ~0xFF) | (count & 0xFF))
        count &= 0xFF
        dest, _ = _rm(b, size)
        text = f"{op}{SUFFIX[size]} %cl, {dest}"
    undefined, _ = shift_undefined(op, size, count)
    return _Parts(text, undefined)


def _double_shift(b: SnippetBuilder) -> _Parts:
    rng = b.rng
    op = rng.choice(("shld", "shrd"))
    size = rng.choice((2, 4, 8))
    count = _shift_count(rng, size) & 0xFF
    if rng.random() < 0.5:
        count_text = f"${count}"
    else:
        b.fix(1, (b.regs[1] & ~0xFF) | count)
        count_text = "%cl"
    src = b.reg(size)
    undefined, result_undefined = shift_undefined(op, size, count)
    if result_undefined:  # a 16-bit count above 16: only a register result can be masked
        dest = b.reg(size)
        return _Parts(f"{op}{SUFFIX[size]} {count_text}, {src}, {dest}", undefined,
                      (REG64[_reg_number(dest)],))
    dest, _ = _rm(b, size)
    return _Parts(f"{op}{SUFFIX[size]} {count_text}, {src}, {dest}", undefined)


def _reg_number(text: str) -> int:
    name = text.lstrip("%")
    for names in NAMES.values():
        if name in names:
            return names.index(name)
    raise ValueError(f"not a register operand: {text}")


def _muldiv(b: SnippetBuilder) -> _Parts:
    rng = b.rng
    op = rng.choice(("mul", "imul", "div", "idiv", "imul2", "imul3"))
    size = _size(rng) if op not in ("imul2", "imul3") else rng.choice((2, 4, 8))
    s = SUFFIX[size]
    undefined = (SF | ZF | AF | PF) if "mul" in op else ARITH
    if op in ("div", "idiv") and size > 1 and rng.random() < 0.6:
        # A small high half of the dividend, so that #DE stays the exception, not the rule.
        b.set(2, size, rng.choice((0, 0, 1, (1 << (8 * size)) - 1)))
    if op == "imul2":
        src, _ = _rm(b, size)
        return _Parts(f"imul{s} {src}, {b.reg(size)}", undefined)
    if op == "imul3":
        imm = edge_value(rng, 1 if rng.random() < 0.5 else min(size, 4))
        imm = imm - (1 << 32) if imm >= 0x8000_0000 else imm
        src, _ = _rm(b, size)
        return _Parts(f"imul{s} ${imm}, {src}, {b.reg(size)}", undefined)
    b.fixed.update((0, 2))  # the implicit operands keep their planted values
    src, _ = _rm(b, size)
    return _Parts(f"{op}{s} {src}", undefined)


def _bits(b: SnippetBuilder) -> _Parts:
    rng = b.rng
    size = rng.choice((2, 4, 8))
    s = SUFFIX[size]
    # popcnt is implemented but left out: the nested KVM here fails to emulate it.
    op = rng.choice(("bt", "bts", "btr", "btc", "bsf", "bsr"))
    if op in ("bsf", "bsr"):
        src, _ = _rm(b, size)
        dest = b.reg(size)
        # A zero source leaves the destination as it was (AMD) or undefined (Intel); a
        # 32-bit one is then sometimes zero-extended, sometimes not, on the same AMD CPU.
        high = (REG64[_reg_number(dest)],) if size == 4 else ()
        return _Parts(f"{op}{s} {src}, {dest}", CF | OF | SF | AF | PF, undefined_high_regs=high)
    undefined = OF | SF | AF | PF
    if rng.random() < 0.5:
        dest, _ = _rm(b, size)
        return _Parts(f"{op}{s} ${rng.randrange(256)}, {dest}", undefined)
    # A register bit offset reaches outside a memory operand: keep it within ±2 KiB bits.
    n = b.pick(allow_rsp=False)
    offset = rng.choice((0, 1, 8 * size - 1, 8 * size, -1, rng.randrange(-2048, 2048)))
    b.set(n, size, offset)
    b.fixed.add(n)
    mem = b.mem(size, kind=rng.choice(("data", "data", "split")))
    dest = mem.text if rng.random() < 0.5 else b.reg(size)
    return _Parts(f"{op}{s} %{_name(n, size)}, {dest}", undefined)


def _name(n: int, size: int) -> str:
    return NAMES[size][n]


def _conditional(b: SnippetBuilder) -> _Parts:
    rng = b.rng
    cc = rng.choice(CONDITIONS)
    if rng.random() < 0.5:
        dest, _ = _rm(b, 1)
        return _Parts(f"set{cc} {dest}")
    size = rng.choice((2, 4, 8))
    src, _ = _rm(b, size)
    return _Parts(f"cmov{cc}{SUFFIX[size]} {src}, {b.reg(size)}")


def _exchange(b: SnippetBuilder) -> _Parts:
    rng = b.rng
    op = rng.choice(("xchg", "cmpxchg", "xadd"))
    size = _size(rng)
    s = SUFFIX[size]
    if op == "cmpxchg":
        b.fixed.add(0)
    src = b.reg(size, exclude=(0,) if op == "cmpxchg" else ())
    dest, is_mem = _rm(b, size)
    if op == "cmpxchg" and rng.random() < 0.5:  # make the comparison succeed
        equal = rng.getrandbits(64)
        b.regs[0] = equal
        low = equal & ((1 << (8 * size)) - 1)
        if is_mem and b.patches:
            b.patches[-1] = (b.patches[-1][0], low.to_bytes(size, "little"))
        elif not is_mem and dest.lstrip("%") not in HIGH8:
            b.set(_reg_number(dest), size, low)
    lock = "lock " if is_mem and op != "xchg" and rng.random() < 0.2 else ""
    return _Parts(f"{lock}{op}{s} {src}, {dest}")


def _move(b: SnippetBuilder) -> _Parts:
    rng = b.rng
    form = rng.randrange(7)
    if form == 0:
        size = _size(rng)
        src, _ = _rm(b, size)
        return _Parts(f"mov{SUFFIX[size]} {src}, {b.reg(size)}")
    if form == 1:
        size = _size(rng)
        dest, _ = _rm(b, size)
        imm = edge_value(rng, min(size, 4))
        imm = imm - (1 << 32) if size == 8 and imm >= 0x8000_0000 else imm
        return _Parts(f"mov{SUFFIX[size]} ${imm}, {dest}")
    if form == 2:
        return _Parts(f"movabsq ${edge_value(rng, 8)}, {b.reg(8)}")
    if form in (3, 4):
        kind = rng.choice(("z", "s"))
        src_size = rng.choice((1, 2))
        # ah..bh cannot meet the REX.W of a 64-bit destination.
        dest_size = rng.choice([n for n in (2, 4, 8) if n > src_size and not (b.legacy_bytes and n == 8)])
        src, _ = _rm(b, src_size)
        return _Parts(f"mov{kind}{SUFFIX[src_size]}{SUFFIX[dest_size]} {src}, {b.reg(dest_size)}")
    if form == 5:
        src, _ = _rm(b, 4)
        if rng.random() < 0.5:
            return _Parts(f"movslq {src}, {b.reg(8)}")
        return _Parts(f"movsxd {src}, {b.reg(4)}")  # 63 /r without REX.W: a plain 32-bit move
    size = rng.choice((4, 8))
    op = rng.choice(("bswap", "cbw", "cwd"))
    if op == "bswap":
        return _Parts(f"bswap {b.reg(size)}")
    b.fixed.update((0, 2))
    return _Parts(rng.choice(("cbtw", "cwtl", "cltq", "cwtd", "cltd", "cqto")))


def _lea(b: SnippetBuilder) -> _Parts:
    size = b.rng.choice((2, 4, 8))
    mem = b.mem(1, kind=b.rng.choice(("data", "noncanonical", "stack")))
    return _Parts(f"lea{SUFFIX[size]} {mem.text}, {b.reg(size)}")


def _stack(b: SnippetBuilder) -> _Parts:
    rng = b.rng
    form = rng.randrange(6)
    size = rng.choice((2, 8, 8))
    s = SUFFIX[size]
    if form == 0:
        return _Parts(f"push{s} {b.reg(size) if rng.random() < 0.8 else '%' + _name(RSP, size)}")
    if form == 1:
        return _Parts(f"pop{s} {b.reg(size) if rng.random() < 0.8 else '%' + _name(RSP, size)}")
    if form == 2:
        imm = edge_value(rng, rng.choice((1, 2 if size == 2 else 4)))
        imm = imm - (1 << 32) if imm >= 0x8000_0000 else imm
        return _Parts(f"push{s} ${imm & 0xFFFF if size == 2 else imm}")
    if form == 3:
        return _Parts(f"push{s} {b.mem(size).text}")
    if form == 4:
        return _Parts(f"pop{s} {b.mem(size).text}")
    if rng.random() < 0.5:
        return _Parts(f"pushf{s}")
    # popf: plant a value without TF and IF (TF would single-step; IF is not ours to test).
    value = (rng.getrandbits(8 * size) & 0x3F_FFFF & ~0x30300) | 0x2
    b.patches.append((b.regs[RSP], value.to_bytes(size, "little")))
    return _Parts(f"popf{s}")


def _string(b: SnippetBuilder) -> _Parts:
    rng = b.rng
    op = rng.choice(("movs", "stos", "lods", "cmps", "scas"))
    size = _size(rng)
    rep = ""
    if rng.random() < 0.7:
        rep = rng.choice(("rep ", "repe ", "repne ")) if op in ("cmps", "scas") else "rep "
    down = rng.random() < 0.3
    if down:
        b.rflags |= DF
    count = rng.choice((0, 1, 2, 3, 5, 8, 13)) if rep else 1
    span = count * size
    addr32 = rng.random() < 0.1

    def place(register: int, writable: bool) -> None:
        where = rng.random()
        if where < 0.1:  # runs into the guard page part-way
            start = GUARD - rng.randrange(1, span + 1) if span else GUARD
            start = start + span - size if down else start
        elif where < 0.2 and not writable:
            start = DATA_RO + rng.randrange(PAGE - span) + (span - size if down else 0)
        else:
            start = DATA + rng.randrange(DATA_SIZE - span - size) + (span if down else 0)
        b.fix(register, start | (rng.getrandbits(32) << 32 if addr32 else 0))
        if rng.random() < 0.5:
            b.patches.append((start, edge_value(rng, size).to_bytes(size, "little")))

    if op in ("movs", "lods", "cmps"):
        place(6, False)
    if op in ("movs", "stos", "cmps", "scas"):
        place(7, True)
    # With 32-bit addressing the count is ECX: garbage above it must not matter.
    b.fix(1, count | (rng.getrandbits(32) << 32 if addr32 else 0))
    b.fixed.add(0)
    prefix = "addr32 " if addr32 else ""
    on_fault = ARITH if rep and op in ("cmps", "scas") else 0
    high: Tuple[str, ...] = ()
    if addr32 and rep and count == 0:
        # No iteration: AMD (and QEMU) leave RCX, RSI and RDI alone. Intel (a Xeon of 2023)
        # clears bits 32-63 of RCX, and of RSI and RDI after movs and of RDI after stos, as
        # if it wrote ECX, ESI and EDI; after lods, cmps and scas it keeps RSI's and RDI's.
        high = ("rcx",) + {"movs": ("rsi", "rdi"), "stos": ("rdi",)}.get(op, ())
    return _Parts(f"{prefix}{rep}{op}{SUFFIX[size]}", fault_undefined_flags=on_fault,
                  undefined_high_regs=high)


def _invalid(b: SnippetBuilder) -> _Parts:
    # (lea with a register operand is #UD too, but the nested KVM here fails to emulate it.)
    if b.rng.random() < 0.5:
        return _Parts("ud2")
    return _Parts(".byte 0xf0, 0x01, 0xc0")  # lock add %eax, %eax: LOCK on a register form


def _flag_pair(b: SnippetBuilder) -> _Parts:
    """A producer whose flags are all defined, then a consumer of them."""
    rng = b.rng
    size = _size(rng)
    s = SUFFIX[size]
    consumer = rng.randrange(5)
    producer = rng.choice(("add", "sub", "adc", "sbb", "cmp", "neg", "inc", "dec", "and", "xor"))
    if producer in ("and", "xor") and consumer >= 3:
        producer = "sub"  # pushf/lahf would expose the AF that and/xor leave undefined
    if producer in ("neg", "inc", "dec"):
        first = f"{producer}{s} {b.reg(size)}"
    else:
        first = f"{producer}{s} {b.reg(size)}, {b.reg(size)}"
    if consumer == 0:
        second = f"set{rng.choice(CONDITIONS)} {b.reg(1)}"
    elif consumer == 1:
        second = f"cmov{rng.choice(CONDITIONS)}q {b.reg(8)}, {b.reg(8)}"
    elif consumer == 2:
        op = rng.choice(("adc", "sbb", "rcl", "rcr"))
        second = f"{op}{s} {b.reg(size)}, {b.reg(size)}" if op in ("adc", "sbb") else f"{op}{s} {b.reg(size)}"
    elif consumer == 3:
        second = "pushfq"
    else:
        second = rng.choice(("cmc", "stc", "clc", "lahf", "sahf"))
    undefined = AF if producer in ("and", "xor") else 0
    return _Parts(f"{first}\n{second}", undefined)


FAMILIES: Tuple[Tuple[str, Callable[[SnippetBuilder], _Parts], int], ...] = (
    ("alu", _alu, 20), ("unary", _unary, 5), ("shift", _shift, 14), ("double-shift", _double_shift, 5),
    ("muldiv", _muldiv, 10), ("bits", _bits, 8), ("conditional", _conditional, 6),
    ("exchange", _exchange, 6), ("move", _move, 8), ("lea", _lea, 3), ("stack", _stack, 6),
    ("string", _string, 8), ("invalid", _invalid, 1), ("flag-pair", _flag_pair, 6),
)


def generate(seed: int, count: int) -> List[Snippet]:
    """``count`` snippets, the same ones for the same seed on every runtime."""
    rng = random.Random(seed)
    names = [name for name, _, _ in FAMILIES]
    weights = [weight for _, _, weight in FAMILIES]
    table = {name: fn for name, fn, _ in FAMILIES}
    out = []
    for _ in range(count):
        family = rng.choices(names, weights)[0]
        builder = SnippetBuilder(random.Random(rng.getrandbits(64)),
                                 legacy_bytes=rng.random() < 0.1)
        parts = table[family](builder)
        out.append(Snippet(parts.asm, builder.gprs(), builder.rflags, rng.getrandbits(32),
                           tuple(builder.patches), parts.undefined_flags, parts.undefined_regs,
                           parts.fault_undefined_flags, parts.undefined_high_regs))
    return out

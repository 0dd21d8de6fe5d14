"""SSE/SSE2: moves and their alignment rules, the packed-integer operations glibc's string
functions use, shuffles and byte shifts, and scalar/packed floating point with conversions."""

from __future__ import annotations

import struct

import pytest

from .harness import assemble, long_mode_cpu, needs_as, run_to_hlt

pytestmark = needs_as

DATA = 0x20000
OUT = 0x30000
CR4_PAE_OSFXSR = 0x20 | 0x200
M128 = (1 << 128) - 1


def run(source: str, data: bytes = b"", regs: dict = None, cr4: int = CR4_PAE_OSFXSR):
    memory, cpu = long_mode_cpu(assemble(source + "\nhlt"), {"cr4": cr4, **(regs or {})})
    memory.write(DATA, data)
    run_to_hlt(cpu)
    return memory, cpu


def xmm_regs(**values: int) -> dict:
    xmm = [0] * 16
    for name, value in values.items():
        xmm[int(name[3:])] = value
    return {"xmm": xmm}


def from_bytes(data: bytes) -> int:
    return int.from_bytes(data, "little")


def to_bytes(value: int) -> bytes:
    return value.to_bytes(16, "little")


def test_sse_without_cr4_osfxsr_is_ud():
    _, cpu = run("pxor %xmm0, %xmm0", cr4=0x20)
    assert cpu.registers()["r15"] == 6


def test_movdqa_needs_alignment_movdqu_does_not():
    data = bytes(range(48))
    memory, cpu = run(f"movdqu {DATA + 1}, %xmm3\nmovdqu %xmm3, {OUT + 3}\nmovdqa {DATA + 16}, %xmm4\n"
                      f"movaps %xmm4, {OUT + 32}\nmov $1, %r14\nmovdqa {DATA + 8}, %xmm5\nmov $2, %r14",
                      data)
    assert memory.read(OUT + 3, 16) == data[1:17]
    assert memory.read(OUT + 32, 16) == data[16:32]
    assert cpu.registers()["r15"] == 13 and cpu.registers()["r14"] == 1


def test_strlen_idiom_pcmpeqb_pmovmskb_bsf():
    text = b"hello, sse world\0and more garbage"
    _, cpu = run(f"pxor %xmm0, %xmm0\nmovdqu {DATA + 2}, %xmm1\npcmpeqb %xmm0, %xmm1\n"
                 "pmovmskb %xmm1, %eax\nbsf %eax, %ecx", text)
    r = cpu.registers()
    assert r["rax"] == 1 << (text.index(b"\0") - 2)
    assert r["rcx"] == text.index(b"\0") - 2


def test_logic_ops():
    a, b = 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210, 0xFFFF_0000_FFFF_0000_0F0F_F0F0_AAAA_5555
    _, cpu = run("movdqa %xmm0, %xmm2\npand %xmm1, %xmm2\nmovdqa %xmm0, %xmm3\npor %xmm1, %xmm3\n"
                 "movdqa %xmm0, %xmm4\npxor %xmm1, %xmm4\nmovdqa %xmm0, %xmm5\npandn %xmm1, %xmm5\n"
                 "movaps %xmm0, %xmm6\nxorps %xmm1, %xmm6\nandnpd %xmm1, %xmm0",
                 regs=xmm_regs(xmm0=a, xmm1=b))
    x = cpu.s.xmm
    assert (x[2], x[3], x[4], x[5], x[6], x[0]) == (a & b, a | b, a ^ b, ~a & b & M128, a ^ b, ~a & b & M128)


def _bytes_op(a: bytes, b: bytes, fn) -> bytes:
    return bytes(fn(x, y) & 0xFF for x, y in zip(a, b))


def test_byte_lane_arithmetic():
    a = bytes([0, 1, 0x7F, 0x80, 0xFF, 0x10, 0x20, 0xFE] * 2)
    b = bytes([1, 0xFF, 1, 0xFF, 0xFF, 0x20, 0x10, 0x03] * 2)
    source = ("movdqa %xmm0, %xmm2\npsubb %xmm1, %xmm2\nmovdqa %xmm0, %xmm3\npminub %xmm1, %xmm3\n"
              "movdqa %xmm0, %xmm4\npaddusb %xmm1, %xmm4\nmovdqa %xmm0, %xmm5\npcmpgtb %xmm1, %xmm5\n"
              "movdqa %xmm0, %xmm6\npaddb %xmm1, %xmm6\nmovdqa %xmm0, %xmm7\npmaxub %xmm1, %xmm7")
    _, cpu = run(source, regs=xmm_regs(xmm0=from_bytes(a), xmm1=from_bytes(b)))
    x = cpu.s.xmm

    def signed(v: int) -> int:
        return v - 256 if v > 127 else v

    assert to_bytes(x[2]) == _bytes_op(a, b, lambda p, q: p - q)
    assert to_bytes(x[3]) == _bytes_op(a, b, min)
    assert to_bytes(x[4]) == _bytes_op(a, b, lambda p, q: min(p + q, 255))
    assert to_bytes(x[5]) == _bytes_op(a, b, lambda p, q: 0xFF if signed(p) > signed(q) else 0)
    assert to_bytes(x[6]) == _bytes_op(a, b, lambda p, q: p + q)
    assert to_bytes(x[7]) == _bytes_op(a, b, max)


def test_word_and_dword_compares_and_multiplies():
    a = struct.pack("<8H", 1, 2, 3, 0xFFFF, 0x8000, 7, 100, 0x1234)
    b = struct.pack("<8H", 1, 3, 3, 0xFFFF, 2, 7, 200, 0x10)
    source = ("movdqa %xmm0, %xmm2\npcmpeqw %xmm1, %xmm2\nmovdqa %xmm0, %xmm3\npmullw %xmm1, %xmm3\n"
              "movdqa %xmm0, %xmm4\npmulhuw %xmm1, %xmm4\nmovdqa %xmm0, %xmm5\npcmpeqd %xmm1, %xmm5")
    _, cpu = run(source, regs=xmm_regs(xmm0=from_bytes(a), xmm1=from_bytes(b)))
    wa, wb = struct.unpack("<8H", a), struct.unpack("<8H", b)
    x = cpu.s.xmm
    assert struct.unpack("<8H", to_bytes(x[2])) == tuple(0xFFFF if p == q else 0 for p, q in zip(wa, wb))
    assert struct.unpack("<8H", to_bytes(x[3])) == tuple((p * q) & 0xFFFF for p, q in zip(wa, wb))
    assert struct.unpack("<8H", to_bytes(x[4])) == tuple((p * q) >> 16 for p, q in zip(wa, wb))
    da, db = struct.unpack("<4I", a), struct.unpack("<4I", b)
    assert struct.unpack("<4I", to_bytes(x[5])) == tuple(0xFFFF_FFFF if p == q else 0 for p, q in zip(da, db))


def test_shuffles_and_unpacks():
    a = from_bytes(bytes(range(16)))
    b = from_bytes(bytes(range(0x10, 0x20)))
    source = ("pshufd $0x1b, %xmm0, %xmm2\nmovdqa %xmm0, %xmm3\npunpcklbw %xmm1, %xmm3\n"
              "movdqa %xmm0, %xmm4\npunpckhqdq %xmm1, %xmm4\nmovdqa %xmm0, %xmm5\npunpcklwd %xmm1, %xmm5\n"
              "pshuflw $0, %xmm0, %xmm6\nmovaps %xmm0, %xmm7\nshufps $0x4e, %xmm1, %xmm7")
    _, cpu = run(source, regs=xmm_regs(xmm0=a, xmm1=b))
    x = cpu.s.xmm
    da = struct.unpack("<4I", to_bytes(a))
    db = struct.unpack("<4I", to_bytes(b))
    assert struct.unpack("<4I", to_bytes(x[2])) == (da[3], da[2], da[1], da[0])
    assert to_bytes(x[3]) == bytes(v for n in range(8) for v in (n, 0x10 + n))
    assert to_bytes(x[4]) == bytes(range(8, 16)) + bytes(range(0x18, 0x20))
    assert to_bytes(x[5]) == bytes([0, 1, 0x10, 0x11, 2, 3, 0x12, 0x13, 4, 5, 0x14, 0x15, 6, 7, 0x16, 0x17])
    assert to_bytes(x[6]) == bytes([0, 1] * 4) + bytes(range(8, 16))
    assert struct.unpack("<4I", to_bytes(x[7])) == (da[2], da[3], db[0], db[1])


def test_byte_and_bit_shifts():
    a = from_bytes(bytes(range(1, 17)))
    source = ("movdqa %xmm0, %xmm1\npslldq $3, %xmm1\nmovdqa %xmm0, %xmm2\npsrldq $5, %xmm2\n"
              "movdqa %xmm0, %xmm3\npsrlq $4, %xmm3\nmovdqa %xmm0, %xmm4\npsllw $17, %xmm4\n"
              "movdqa %xmm0, %xmm5\npsrad $31, %xmm5\nmovdqa %xmm0, %xmm6\npsrlw %xmm7, %xmm6")
    _, cpu = run(source, regs=xmm_regs(xmm0=a, xmm7=3))
    x = cpu.s.xmm
    assert x[1] == (a << 24) & M128
    assert x[2] == a >> 40
    q = struct.unpack("<2Q", to_bytes(a))
    assert struct.unpack("<2Q", to_bytes(x[3])) == (q[0] >> 4, q[1] >> 4)
    assert x[4] == 0
    assert x[5] == 0  # every dword of a is positive
    words = struct.unpack("<8H", to_bytes(a))
    assert struct.unpack("<8H", to_bytes(x[6])) == tuple(w >> 3 for w in words)


def test_movd_movq_between_general_and_xmm_registers():
    memory, cpu = run("movd %eax, %xmm1\nmovq %rbx, %xmm2\nmovd %xmm2, %ecx\nmovq %xmm2, %rdx\n"
                      f"movq %xmm2, {OUT}\nmovq {DATA}, %xmm3\nmovq %xmm1, %xmm4",
                      struct.pack("<Q", 0x1122_3344_5566_7788),
                      regs={"rax": 0xDEAD_BEEF_CAFE_F00D, "rbx": 0x0102_0304_0506_0708,
                            **xmm_regs(xmm1=M128, xmm2=M128, xmm3=M128, xmm4=M128)})
    x, r = cpu.s.xmm, cpu.registers()
    assert x[1] == 0xCAFE_F00D and x[2] == 0x0102_0304_0506_0708
    assert r["rcx"] == 0x0506_0708 and r["rdx"] == 0x0102_0304_0506_0708
    assert memory.read_u64(OUT) == 0x0102_0304_0506_0708
    assert x[3] == 0x1122_3344_5566_7788 and x[4] == 0xCAFE_F00D


def test_movss_movsd_register_keeps_upper_memory_zeroes_it():
    data = struct.pack("<d", 2.5)
    _, cpu = run(f"movsd {DATA}, %xmm1\nmovss %xmm0, %xmm2\nmovlps {DATA}, %xmm3\nmovhps {DATA}, %xmm4",
                 data, regs=xmm_regs(xmm0=0x1234_5678, xmm1=M128, xmm2=M128, xmm3=M128, xmm4=0x77))
    x = cpu.s.xmm
    value = struct.unpack("<Q", data)[0]
    assert x[1] == value
    assert x[2] == (M128 & ~0xFFFF_FFFF) | 0x1234_5678
    assert x[3] == (M128 & ~((1 << 64) - 1)) | value
    assert x[4] == (value << 64) | 0x77


def _f64(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def _f32x4(*values: float) -> int:
    return from_bytes(struct.pack("<4f", *values))


def test_scalar_double_arithmetic_and_conversions():
    source = ("movsd %xmm0, %xmm2\naddsd %xmm1, %xmm2\nmovsd %xmm0, %xmm3\ndivsd %xmm1, %xmm3\n"
              "sqrtsd %xmm1, %xmm4\ncvttsd2si %xmm3, %rax\ncvtsd2si %xmm3, %rbx\n"
              "cvtsi2sd %rcx, %xmm5\ncvttsd2si %xmm6, %edx\ncvtsd2ss %xmm0, %xmm7")
    _, cpu = run(source, regs={"rcx": (-7) & ((1 << 64) - 1),
                               **xmm_regs(xmm0=_f64(10.0), xmm1=_f64(4.0), xmm6=_f64(1e20))})
    x, r = cpu.s.xmm, cpu.registers()
    assert x[2] == _f64(14.0) and x[3] == _f64(2.5) and x[4] == _f64(2.0)
    assert r["rax"] == 2 and r["rbx"] == 2  # truncation; nearest-even of 2.5 is 2
    assert x[5] == _f64(-7.0)
    assert r["rdx"] == 0x8000_0000  # out of range: the integer indefinite
    assert x[7] & 0xFFFF_FFFF == struct.unpack("<I", struct.pack("<f", 10.0))[0]


def test_packed_single_arithmetic_division_by_zero_and_compare():
    a, b = _f32x4(1.0, -2.0, 0.0, 8.0), _f32x4(2.0, 0.0, 0.0, 0.5)
    source = ("movaps %xmm0, %xmm2\nmulps %xmm1, %xmm2\nmovaps %xmm0, %xmm3\ndivps %xmm1, %xmm3\n"
              "movaps %xmm0, %xmm4\ncmpltps %xmm1, %xmm4\nmovaps %xmm0, %xmm5\nminps %xmm1, %xmm5")
    _, cpu = run(source, regs=xmm_regs(xmm0=a, xmm1=b))
    x = cpu.s.xmm
    assert struct.unpack("<4f", to_bytes(x[2])) == (2.0, -0.0, 0.0, 4.0)
    quotient = struct.unpack("<4I", to_bytes(x[3]))
    assert quotient[0] == struct.unpack("<I", struct.pack("<f", 0.5))[0]
    assert quotient[1] == 0xFF80_0000  # -2 / 0 = -inf
    assert quotient[2] == 0xFFC0_0000  # 0 / 0: the default NaN
    assert struct.unpack("<4I", to_bytes(x[4])) == (0xFFFF_FFFF, 0xFFFF_FFFF, 0, 0)
    assert struct.unpack("<4f", to_bytes(x[5])) == (1.0, -2.0, 0.0, 0.5)


@pytest.mark.parametrize("a,b,flags", [(1.0, 2.0, 0x01), (2.0, 1.0, 0x00), (3.0, 3.0, 0x40),
                                       (float("nan"), 1.0, 0x45)])
def test_ucomisd_sets_zf_pf_cf(a, b, flags):
    _, cpu = run("ucomisd %xmm1, %xmm0\npushfq\npop %rax", regs=xmm_regs(xmm0=_f64(a), xmm1=_f64(b)))
    assert cpu.registers()["rax"] & 0x8D5 == flags


def test_packuswb_saturates_and_pmaddwd_sums():
    words = struct.pack("<8h", -5, 0, 255, 256, 1000, -1000, 7, 128)
    source = "movdqa %xmm0, %xmm2\npackuswb %xmm1, %xmm2\nmovdqa %xmm0, %xmm3\npmaddwd %xmm0, %xmm3"
    _, cpu = run(source, regs=xmm_regs(xmm0=from_bytes(words), xmm1=0))
    assert to_bytes(cpu.s.xmm[2]) == bytes([0, 0, 255, 255, 255, 0, 7, 128]) + bytes(8)
    w = struct.unpack("<8h", words)
    expected = tuple(w[2 * n] ** 2 + w[2 * n + 1] ** 2 for n in range(4))
    assert struct.unpack("<4i", to_bytes(cpu.s.xmm[3])) == expected


def test_ldmxcsr_stmxcsr_and_reserved_bits():
    memory, cpu = run(f"movl $0x3f80, {OUT}\nldmxcsr {OUT}\nstmxcsr {OUT + 4}\n"
                      f"movl $0x10000, {OUT + 8}\nmov $1, %r14\nldmxcsr {OUT + 8}\nmov $2, %r14")
    assert memory.read_u32(OUT + 4) == 0x3F80
    assert cpu.registers()["r15"] == 13 and cpu.registers()["r14"] == 1


def test_mmx_register_forms_are_not_implemented_and_raise_ud():
    _, cpu = run("pxor %mm0, %mm0")
    assert cpu.registers()["r15"] == 6

"""x87 FPU: control/status words, loads and stores in every format, arithmetic, compares,
the FXSAVE image the kernel's context switch depends on, and #MF/#NM delivery."""

from __future__ import annotations

import math
import struct

import pytest

from .harness import assemble, long_mode_cpu, needs_as, run_to_hlt

pytestmark = needs_as

DATA = 0x20000
OUT = 0x30000
CR4_PAE_OSFXSR = 0x20 | 0x200
PI_80 = (0x4000 << 64) | 0xC90F_DAA2_2168_C235
ONE_80 = (0x3FFF << 64) | (1 << 63)
FSW_IE, FSW_ZE, FSW_SF, FSW_ES, FSW_C1 = 0x1, 0x4, 0x40, 0x80, 0x200


def run(source: str, data: bytes = b"", regs: dict = None):
    memory, cpu = long_mode_cpu(assemble(source + "\nhlt"), {"cr4": CR4_PAE_OSFXSR, **(regs or {})})
    memory.write(DATA, data)
    run_to_hlt(cpu)
    return memory, cpu


def f64(value: float) -> bytes:
    return struct.pack("<d", value)


def test_fninit_sets_the_default_control_word_and_clears_status():
    memory, _ = run(f"fld1\nfninit\nfnstcw {OUT}\nfnstsw {OUT + 2}\nfnstsw %ax")
    assert memory.read_u16(OUT) == 0x037F
    assert memory.read_u16(OUT + 2) == 0
    # After fninit the stack is empty, so TOP is 0 again.


def test_fnstsw_reports_top_after_pushes():
    _, cpu = run("fninit\nfld1\nfldz\nfnstsw %ax")
    assert (cpu.registers()["rax"] >> 11) & 7 == 6


@pytest.mark.parametrize("value", [0, 1, -1, 12345678901234567, (1 << 63) - 1, -(1 << 63), 1 << 62])
def test_fild_fistp_m64_round_trip_is_exact(value):
    data = struct.pack("<q", value)
    memory, _ = run(f"fninit\nfildq {DATA}\nfistpq {OUT}", data)
    assert struct.unpack("<q", memory.read(OUT, 8))[0] == value


@pytest.mark.parametrize("a,b", [(1.5, 2.25), (-3.0, 0.125), (1e300, 1e300), (0.1, 0.2)])
def test_fadd_fmul_fsub_fdiv_m64(a, b):
    source = (f"fninit\nfldl {DATA}\nfaddl {DATA + 8}\nfstpl {OUT}\n"
              f"fldl {DATA}\nfmull {DATA + 8}\nfstpl {OUT + 8}\n"
              f"fldl {DATA}\nfsubl {DATA + 8}\nfstpl {OUT + 16}\n"
              f"fldl {DATA}\nfdivrl {DATA + 8}\nfstpl {OUT + 24}")
    memory, _ = run(source, f64(a) + f64(b))
    got = struct.unpack("<4d", memory.read(OUT, 32))
    assert got == (a + b, a * b, a - b, b / a)


def test_register_forms_of_sub_and_div_use_the_right_operand_order():
    # st0 = 8, st1 = 2: fsubr %st(1) (D8 E9) = st1 - st0; fdivp (DE F9) st1 = st1 / st0.
    source = (f"fninit\nfldl {DATA + 8}\nfldl {DATA}\nfsubr %st(1), %st\nfstpl {OUT}\n"
              f"fldl {DATA}\n.byte 0xde, 0xf9\nfstpl {OUT + 8}")
    memory, _ = run(source, f64(8.0) + f64(2.0))
    assert struct.unpack("<2d", memory.read(OUT, 16)) == (2.0 - 8.0, 2.0 / 8.0)


def test_division_by_zero_masked_gives_infinity_and_sets_ze():
    memory, cpu = run(f"fninit\nfld1\nfdivl {DATA}\nfstpl {OUT}\nfnstsw %ax", f64(0.0))
    assert struct.unpack("<d", memory.read(OUT, 8))[0] == math.inf
    assert cpu.registers()["rax"] & FSW_ZE


def test_unmasked_exception_raises_mf_at_the_next_waiting_instruction():
    # Unmask ZE (control word 0x37B), divide by zero: #MF (vector 16) comes at fwait.
    _, cpu = run(f"fninit\nmovw $0x37b, {OUT}\nfldcw {OUT}\nfld1\nfdivl {DATA}\nmov $1, %r14\nfwait\n"
                 "mov $2, %r14", f64(0.0))
    r = cpu.registers()
    assert r["r15"] == 16 and r["r14"] == 1


def test_x87_with_cr0_ts_raises_nm():
    _, cpu = run("mov %cr0, %rax\nor $8, %rax\nmov %rax, %cr0\nfninit\nmov $5, %r14")
    assert cpu.registers()["r15"] == 7 and cpu.registers()["r14"] == 0


def test_stack_overflow_sets_ie_sf_c1_and_loads_indefinite():
    memory, cpu = run("fninit\n" + "fld1\n" * 9 + f"fnstsw %ax\nfstpt {OUT}")
    status = cpu.registers()["rax"]
    assert status & (FSW_IE | FSW_SF | FSW_C1) == FSW_IE | FSW_SF | FSW_C1
    raw = int.from_bytes(memory.read(OUT, 10), "little")
    assert raw == (0xFFFF << 64) | 0xC000_0000_0000_0000


def test_fistp_follows_the_rounding_control():
    # -2.5 and 2.5: nearest-even gives -2 and 2, round-down (fcw 0x77f) gives -3 and 2.
    source = (f"fninit\nfldl {DATA}\nfistpl {OUT}\nfldl {DATA + 8}\nfistpl {OUT + 4}\n"
              f"movw $0x77f, {OUT + 16}\nfldcw {OUT + 16}\n"
              f"fldl {DATA}\nfistpl {OUT + 8}\nfldl {DATA + 8}\nfistpl {OUT + 12}")
    memory, _ = run(source, f64(-2.5) + f64(2.5))
    assert struct.unpack("<4i", memory.read(OUT, 16)) == (-2, 2, -3, 2)


def test_fcomi_sets_zf_pf_cf():
    source = (f"fninit\nfldl {DATA}\nfldl {DATA + 8}\nfcomi %st(1), %st\npushfq\npop %rbx\n"
              f"fxch\nfcomi %st(1), %st\npushfq\npop %rcx\nfucomi %st(0), %st\npushfq\npop %rdx")
    _, cpu = run(source, f64(3.0) + f64(1.0))
    r = cpu.registers()
    assert r["rbx"] & 0x45 == 0x01  # 1 < 3: CF
    assert r["rcx"] & 0x45 == 0x00  # 3 > 1
    assert r["rdx"] & 0x45 == 0x40  # equal: ZF


def test_fld_fstp_m80_and_constants_are_bit_exact():
    memory, _ = run(f"fninit\nfldpi\nfstpt {OUT}\nfldt {DATA}\nfstpt {OUT + 16}",
                    (ONE_80 | (1 << 79)).to_bytes(10, "little"))
    assert int.from_bytes(memory.read(OUT, 10), "little") == PI_80
    assert int.from_bytes(memory.read(OUT + 16, 10), "little") == ONE_80 | (1 << 79)


def test_fxsave_layout_holds_x87_and_sse_state():
    xmm = [0] * 16
    xmm[0] = xmm[15] = DATA
    memory, _ = run(f"fninit\nfld1\nfldpi\nfxsave64 {OUT}", regs={"xmm": xmm})
    assert memory.read_u16(OUT) == 0x037F
    assert (memory.read_u16(OUT + 2) >> 11) & 7 == 6  # TOP
    assert memory.read_u8(OUT + 4) == 0xC0  # abridged tags: physical 6 and 7 valid
    assert memory.read_u32(OUT + 24) == 0x1F80  # MXCSR
    assert memory.read_u32(OUT + 28) == 0xFFFF  # MXCSR_MASK
    assert int.from_bytes(memory.read(OUT + 32, 10), "little") == PI_80  # ST0
    assert int.from_bytes(memory.read(OUT + 48, 10), "little") == ONE_80  # ST1
    assert memory.read_u64(OUT + 160) == DATA
    assert memory.read_u64(OUT + 160 + 15 * 16) == DATA


def test_fxrstor_then_fxsave_round_trips_the_image():
    image = bytearray(512)
    struct.pack_into("<HHBxH", image, 0, 0x027F, 5 << 11, 0x20, 0)
    struct.pack_into("<I", image, 24, 0x1F00 | 0x8000)
    image[32:42] = PI_80.to_bytes(10, "little")
    image[160:176] = bytes(range(16))
    image[176 + 16 * 14:176 + 16 * 15] = bytes(range(100, 116))
    source = f"fxrstor64 {DATA}\nfxsave64 {OUT}\nfstpt {OUT + 512}\nfnstsw %ax"
    memory, cpu = run(source, bytes(image))
    saved = memory.read(OUT, 512)
    assert saved[:8] == bytes(image[:8]) and saved[24:28] == bytes(image[24:28])
    assert saved[32:42] == bytes(image[32:42]) and saved[160:] == bytes(image[160:])
    assert int.from_bytes(memory.read(OUT + 512, 10), "little") == PI_80
    assert cpu.s.mxcsr == 0x9F00


def test_fxrstor_with_reserved_mxcsr_bits_raises_gp():
    image = bytearray(512)
    struct.pack_into("<I", image, 24, 0x10000)
    _, cpu = run(f"fxrstor64 {DATA}", bytes(image))
    assert cpu.registers()["r15"] == 13


def test_fxsave_needs_16_byte_alignment():
    _, cpu = run(f"fxsave64 {OUT + 8}")
    assert cpu.registers()["r15"] == 13


def test_fnstenv_fldenv_keep_tags_and_mask_exceptions():
    source = (f"fninit\nfld1\nfldz\nfnstenv {OUT}\nfnstcw {OUT + 64}\nfninit\nfldenv {OUT}\n"
              "fnstsw %ax")
    memory, cpu = run(source)
    # ST0 = 0 (physical 6, tag 01), ST1 = 1 (physical 7, tag 00), the rest empty (11).
    assert memory.read_u16(OUT + 8) == 0x1FFF
    assert memory.read_u16(OUT + 64) == 0x037F  # already all masked
    assert (cpu.registers()["rax"] >> 11) & 7 == 6


def test_fbstp_and_fbld_packed_bcd():
    memory, _ = run(f"fninit\nfildl {DATA}\nfbstp {OUT}\nfbld {OUT}\nfistpl {OUT + 16}",
                    struct.pack("<i", -987654321))
    raw = int.from_bytes(memory.read(OUT, 10), "little")
    assert raw == (1 << 79) | 0x987654321
    assert struct.unpack("<i", memory.read(OUT + 16, 4))[0] == -987654321


def test_transcendentals_and_fsqrt_on_the_float_model():
    source = (f"fninit\nfldl {DATA}\nfsqrt\nfstpl {OUT}\nfldpi\nfsin\nfstpl {OUT + 8}\n"
              f"fld1\nfldl {DATA}\nfyl2x\nfstpl {OUT + 16}")
    memory, _ = run(source, f64(2.0))
    got = struct.unpack("<3d", memory.read(OUT, 24))
    assert got[0] == math.sqrt(2.0)
    assert abs(got[1]) < 1e-15
    assert got[2] == 1.0  # 1 * log2(2)


def test_emms_and_fnclex():
    _, cpu = run("fninit\nfld1\nemms\nfstp %st(0)\nfnstsw %ax\nmov %rax, %rbx\nfnclex\nfnstsw %ax")
    r = cpu.registers()
    assert r["rbx"] & (FSW_IE | FSW_SF) == FSW_IE | FSW_SF  # the stack was empty after emms
    assert r["rax"] & 0xFF == 0


def _top(status: int) -> int:
    return (status >> 11) & 7


@pytest.mark.parametrize("load, store, store_pop, data, width", [
    ("flds", "fsts", "fstps", struct.pack("<f", -1.75), 4),
    ("fldl", "fstl", "fstpl", f64(3.0e-300), 8),
    ("filds", "fists", "fistps", struct.pack("<h", -1234), 2),
    ("fildl", "fistl", "fistpl", struct.pack("<i", 99_999_999), 4),
])
def test_every_load_and_store_format_round_trips_and_only_the_p_form_pops(load, store, store_pop,
                                                                          data, width):
    source = (f"fninit\n{load} {DATA}\n{store} {OUT}\nfnstsw {OUT + 32}\n"
              f"{store_pop} {OUT + 16}\nfnstsw {OUT + 34}")
    memory, _ = run(source, data)
    assert memory.read(OUT, width) == data and memory.read(OUT + 16, width) == data
    assert _top(memory.read_u16(OUT + 32)) == 7  # fst kept the value on the stack
    assert _top(memory.read_u16(OUT + 34)) == 0  # fstp popped it


@pytest.mark.parametrize("modrm_bytes", ["0xd9, 0x08", "0xdb, 0x08", "0xdb, 0x20", "0xdb, 0x30",
                                         "0xdd, 0x08", "0xdd, 0x28", "0xdf, 0x08"])
def test_undefined_memory_forms_raise_ud(modrm_bytes):
    # D9/1, DB/4, DB/6, DD/5 are reserved; DB/1, DD/1, DF/1 (fisttp) are SSE3, not advertised.
    _, cpu = run(f"fninit\nmov ${DATA}, %rax\nmov $1, %r14\n.byte {modrm_bytes}\nmov $2, %r14")
    r = cpu.registers()
    assert r["r15"] == 6 and r["r14"] == 1


def test_fnsave_frstor_fnstsw_m16_and_fldcw_fnstcw():
    source = (f"fninit\nmovw $0x27f, {DATA}\nfldcw {DATA}\nfld1\nfldpi\nfnsave {OUT}\n"
              f"fnstcw {OUT + 200}\nfnstsw {OUT + 202}\nfrstor {OUT}\nfnstcw {OUT + 204}\n"
              f"fstpt {OUT + 210}\nfstpt {OUT + 220}")
    memory, _ = run(source)
    assert memory.read_u16(OUT) == 0x27F  # fnsave stored the control word first
    assert memory.read_u16(OUT + 200) == 0x37F and memory.read_u16(OUT + 202) == 0  # then fninit
    assert memory.read_u16(OUT + 204) == 0x27F  # frstor brought it back, and the stack
    assert int.from_bytes(memory.read(OUT + 210, 10), "little") == PI_80
    assert int.from_bytes(memory.read(OUT + 220, 10), "little") == ONE_80


def test_register_forms_ffree_fst_sti_fucomp_fcmov_and_ffreep():
    source = (f"fninit\nfldl {DATA}\nfld1\n"   # st0 = 1, st1 = 5
              "fst %st(1)\n"                   # st1 = 1
              "fucom %st(1)\nfnstsw %ax\nmov %rax, %rbx\n"  # equal: C3
              f"fldl {DATA}\nstc\nfcmovb %st(1), %st\nfstpl {OUT}\n"  # CF: st0 = st1 (= 1)
              f"fldl {DATA}\nclc\nfcmovb %st(1), %st\nfstpl {OUT + 8}\n"  # no CF: keeps 5
              "fucomp %st(1)\nfnstsw %ax\nmov %rax, %rcx\n"  # pops one
              "ffree %st(0)\nffreep %st(7)\nfnstsw %ax\nfnstenv %ds:" + str(OUT + 16))
    memory, cpu = run(source, f64(5.0))
    r = cpu.registers()
    assert r["rbx"] & 0x4500 == 0x4000
    assert struct.unpack("<2d", memory.read(OUT, 16)) == (1.0, 5.0)
    assert _top(r["rcx"]) == 7
    assert _top(r["rax"]) == 0 and memory.read_u16(OUT + 16 + 8) == 0xFFFF  # all empty


@pytest.mark.parametrize("rflags", [0x2, 0x3, 0x42, 0x6, 0x43])
@pytest.mark.parametrize("mnemonic, taken_if", [
    ("fcmovb", lambda f: f & 1), ("fcmove", lambda f: f & 0x40),
    ("fcmovbe", lambda f: f & 0x41), ("fcmovu", lambda f: f & 4),
    ("fcmovnb", lambda f: not f & 1), ("fcmovne", lambda f: not f & 0x40),
    ("fcmovnbe", lambda f: not f & 0x41), ("fcmovnu", lambda f: not f & 4),
])
def test_fcmov_moves_on_its_condition(mnemonic, taken_if, rflags):
    source = f"fninit\nfld1\nfldz\npush ${rflags:#x}\npopfq\n{mnemonic} %st(1), %st\nfstpl {OUT}"
    memory, _ = run(source)
    assert struct.unpack("<d", memory.read(OUT, 8))[0] == (1.0 if taken_if(rflags) else 0.0)

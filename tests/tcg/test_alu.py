"""Integer ALU, shifts, multiply/divide and bit instructions: results and exact flags."""

from __future__ import annotations

import pytest

from .harness import assemble, flags_of, long_mode_cpu, needs_as, run_asm, run_to_hlt

pytestmark = needs_as

CF, PF, AF, ZF, SF, OF = 1, 4, 0x10, 0x40, 0x80, 0x800
ARITH = CF | PF | AF | ZF | SF | OF
M64 = (1 << 64) - 1


def _parity(v: int) -> int:
    return PF if bin(v & 0xFF).count("1") % 2 == 0 else 0


def _add_flags(a: int, b: int, bits: int, carry: int = 0) -> int:
    mask = (1 << bits) - 1
    res = (a + b + carry) & mask
    sign = 1 << (bits - 1)
    f = _parity(res)
    f |= CF if a + b + carry > mask else 0
    f |= ZF if res == 0 else 0
    f |= SF if res & sign else 0
    f |= OF if (a ^ res) & (b ^ res) & sign else 0
    f |= AF if (a ^ b ^ res) & 0x10 else 0
    return f


def _sub_flags(a: int, b: int, bits: int, borrow: int = 0) -> int:
    mask = (1 << bits) - 1
    res = (a - b - borrow) & mask
    sign = 1 << (bits - 1)
    f = _parity(res)
    f |= CF if a < b + borrow else 0
    f |= ZF if res == 0 else 0
    f |= SF if res & sign else 0
    f |= OF if (a ^ b) & (a ^ res) & sign else 0
    f |= AF if (a ^ b ^ res) & 0x10 else 0
    return f


EDGES64 = [0, 1, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, M64, 0xF, 0x10, 0xFFFF_FFFF]


@pytest.mark.parametrize("a", EDGES64)
@pytest.mark.parametrize("b", [0, 1, M64, 0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF])
def test_add_sub_64_flags_follow_the_definition(a, b):
    _, cpu = run_asm("add %rbx, %rax\npushfq\npop %rcx\nsub %rbx, %rdx\npushfq\npop %rsi",
                     {"rax": a, "rbx": b, "rdx": a})
    r = cpu.registers()
    assert r["rax"] == (a + b) & M64
    assert r["rcx"] & ARITH == _add_flags(a, b, 64)
    assert r["rdx"] == (a - b) & M64
    assert r["rsi"] & ARITH == _sub_flags(a, b, 64)


@pytest.mark.parametrize("a,b", [(0x7F, 1), (0x80, 0xFF), (0xFF, 1), (0, 0), (0x0F, 0x01)])
def test_8bit_add_and_cmp_keep_upper_bytes(a, b):
    _, cpu = run_asm("add %bl, %al\npushfq\npop %rcx\ncmp %bl, %ah", {"rax": 0x1234_5600 | a, "rbx": b})
    r = cpu.registers()
    assert r["rax"] == 0x1234_5600 | ((a + b) & 0xFF)
    assert r["rcx"] & ARITH == _add_flags(a, b, 8)
    assert r["rflags"] & ARITH == _sub_flags(0x56, b, 8)


def test_32bit_write_zero_extends_16bit_write_preserves():
    _, cpu = run_asm("mov $-1, %rax\nmov $-1, %rbx\nadd $1, %eax\nmov $0x1234, %bx",
                     {})
    r = cpu.registers()
    assert r["rax"] == 0
    assert r["rbx"] == 0xFFFF_FFFF_FFFF_1234


@pytest.mark.parametrize("carry", [0, 1])
@pytest.mark.parametrize("a,b", [(M64, 0), (M64, M64), (5, 7), (0x7FFF_FFFF_FFFF_FFFF, 0)])
def test_adc_sbb_use_carry(carry, a, b):
    set_carry = "stc" if carry else "clc"
    _, cpu = run_asm(f"{set_carry}\nadc %rbx, %rax\npushfq\npop %rcx\n{set_carry}\nsbb %rbx, %rdx",
                     {"rax": a, "rbx": b, "rdx": a})
    r = cpu.registers()
    assert r["rax"] == (a + b + carry) & M64
    assert r["rcx"] & ARITH == _add_flags(a, b, 64, carry)
    assert r["rdx"] == (a - b - carry) & M64
    assert r["rflags"] & ARITH == _sub_flags(a, b, 64, carry)


def test_inc_dec_keep_carry_and_set_overflow():
    _, cpu = run_asm("stc\ninc %eax\npushfq\npop %rcx\nclc\ndec %ebx", {"rax": 0x7FFF_FFFF, "rbx": 0x8000_0000})
    r = cpu.registers()
    assert r["rax"] == 0x8000_0000 and r["rcx"] & (CF | OF | SF | ZF) == CF | OF | SF
    assert r["rbx"] == 0x7FFF_FFFF and r["rflags"] & (CF | OF | SF | ZF) == OF


def test_logic_clears_cf_of_neg_sets_cf():
    _, cpu = run_asm("stc\nxor %eax, %eax\npushfq\npop %rcx\nneg %rbx", {"rax": 5, "rbx": 1})
    r = cpu.registers()
    assert r["rax"] == 0 and r["rcx"] & ARITH == ZF | PF
    assert r["rbx"] == M64 and r["rflags"] & (CF | SF | ZF) == CF | SF


@pytest.mark.parametrize("insn,value,count,result,flags", [
    ("shl", 0x8000_0000_0000_0001, 1, 2, CF | OF),
    ("shr", 0x8000_0000_0000_0001, 1, 0x4000_0000_0000_0000, CF | OF),
    ("sar", 0x8000_0000_0000_0000, 63, M64, 0),
    ("rol", 0x8000_0000_0000_0001, 1, 3, CF | OF),
    ("ror", 1, 1, 0x8000_0000_0000_0000, CF | OF),
])
def test_shift_rotate_64(insn, value, count, result, flags):
    _, cpu = run_asm(f"{insn} %cl, %rax", {"rax": value, "rcx": count})
    r = cpu.registers()
    assert r["rax"] == result
    assert r["rflags"] & (CF | OF) == flags


def test_shift_by_zero_changes_no_flags():
    _, cpu = run_asm("cmp %rax, %rax\nshl %cl, %rbx", {"rbx": 5, "rcx": 64})
    r = cpu.registers()
    assert r["rbx"] == 5 and r["rflags"] & ZF


def test_rcl_rcr_through_carry():
    _, cpu = run_asm("stc\nrcl $1, %al\nmov %al, %bl\nrcr $1, %al", {"rax": 0x80})
    r = cpu.registers()
    assert r["rbx"] & 0xFF == 0x01
    assert r["rax"] & 0xFF == 0x80 and r["rflags"] & CF


def test_shld_shrd():
    _, cpu = run_asm("shld $8, %rbx, %rax\nshrd $8, %rdx, %rsi",
                     {"rax": 0x11, "rbx": 0xAB00_0000_0000_0000, "rsi": 0x1200, "rdx": 0xCD})
    r = cpu.registers()
    assert r["rax"] == 0x11AB
    assert r["rsi"] == 0xCD00_0000_0000_0012


def test_mul_imul_wide_results_and_overflow_flags():
    _, cpu = run_asm("mul %rbx\nmov %rax, %r8\nmov %rdx, %r9\npushfq\npop %r10\n"
                     "mov $-3, %rax\nmov $5, %rcx\nimul %rcx\nimul $7, %rcx, %r11",
                     {"rax": M64, "rbx": 2})
    r = cpu.registers()
    assert (r["r9"], r["r8"]) == (1, M64 - 1)
    assert r["r10"] & (CF | OF) == CF | OF
    assert r["rax"] == (-15) & M64 and r["rdx"] == M64
    assert r["rflags"] & (CF | OF) == 0
    assert r["r11"] == 35


def test_div_idiv_truncate_toward_zero():
    _, cpu = run_asm("div %rbx\nmov %rax, %r8\nmov %rdx, %r9\nmov $-7, %rax\ncqo\nmov $2, %rcx\nidiv %rcx",
                     {"rdx": 1, "rax": 0, "rbx": 3})
    r = cpu.registers()
    assert (r["r8"], r["r9"]) == ((1 << 64) // 3, (1 << 64) % 3)
    assert r["rax"] == (-3) & M64 and r["rdx"] == (-1) & M64


def test_bit_ops_and_scans():
    _, cpu = run_asm("bts $5, %rax\nsetc %r8b\nbt $5, %rax\nsetc %r9b\nbtr %rcx, %rax\n"
                     "bsf %rbx, %r10\nbsr %rbx, %r11\nbsf %rdx, %r12",
                     {"rax": 0x100, "rcx": 8, "rbx": 0x0000_0F00_0000_1000, "rdx": 0, "r12": 77})
    r = cpu.registers()
    assert r["r8"] == 0 and r["r9"] == 1
    assert r["rax"] == 0x20
    assert r["r10"] == 12 and r["r11"] == 43
    assert r["r12"] == 77 and r["rflags"] & ZF


def test_bt_memory_with_register_offset_reaches_outside_operand():
    mem, cpu = run_asm("bts %rcx, (%rbx)\nmov $-1, %rdx\nbtc %rdx, 8(%rbx)", {"rbx": 0x20000, "rcx": 70})
    assert mem.read_u64(0x20008) == 1 << 6
    assert mem.read_u64(0x20000) == 1 << 63


def test_setcc_cmovcc_signed_unsigned():
    _, cpu = run_asm("cmp %rbx, %rax\nsetl %cl\nsetb %dl\ncmovg %rbx, %rsi\ncmova %rbx, %rdi",
                     {"rax": M64, "rbx": 1, "rsi": 9, "rdi": 9})
    r = cpu.registers()
    assert r["rcx"] & 0xFF == 1  # -1 < 1 signed
    assert r["rdx"] & 0xFF == 0  # 0xFFFF... > 1 unsigned
    assert r["rsi"] == 9 and r["rdi"] == 1


def test_xchg_cmpxchg_xadd():
    mem, cpu = run_asm("lock cmpxchg %rcx, (%rbx)\nsetz %r8b\nlock xadd %rdx, (%rbx)\nxchg %rsi, (%rbx)",
                       {"rax": 0, "rbx": 0x20000, "rcx": 10, "rdx": 5, "rsi": 99})
    r = cpu.registers()
    assert r["r8"] == 1
    assert r["rdx"] == 10
    assert r["rsi"] == 15
    assert mem.read_u64(0x20000) == 99


def test_cmpxchg16b():
    mem, cpu = run_asm("mov $0x20000, %rdi\nmovq $1, (%rdi)\nmovq $2, 8(%rdi)\n"
                       "lock cmpxchg16b (%rdi)", {"rax": 1, "rdx": 2, "rbx": 7, "rcx": 8})
    assert (mem.read_u64(0x20000), mem.read_u64(0x20008)) == (7, 8)
    assert flags_of(cpu) & ZF


@pytest.mark.parametrize("translate_after", [None, 0], ids=["interpreter", "translator"])
def test_cmpxchg16b_with_kernel_pointers(translate_after):
    """SLUB swaps a freelist pointer (bit 63 set) and a counter word: both halves compare as
    unsigned 64-bit values, and the failing case loads RDX:RAX with the memory's halves."""
    pointer, counters, new_pointer = 0xFFFF888003A1C000, 0x0000_0040_0000_0001, 0xFFFF888003A1C100
    source = ("mov $0x20000, %rdi\nmovabs $0xffff888003a1c000, %rsi\nmov %rsi, (%rdi)\n"
              "movabs $0x4000000001, %rsi\nmov %rsi, 8(%rdi)\n"
              "lock cmpxchg16b (%rdi)\nsetz %r8b\n"      # RDX:RAX match: the swap happens
              "lock cmpxchg16b (%rdi)\nsetz %r9b\n")     # now they do not: RDX:RAX := memory
    regs = {"rax": pointer, "rdx": counters, "rbx": new_pointer, "rcx": counters + 1}
    mem, cpu = long_mode_cpu(assemble(source + "\nhlt"), regs)
    cpu.translate_after = translate_after
    run_to_hlt(cpu)
    r = cpu.registers()
    assert (mem.read_u64(0x20000), mem.read_u64(0x20008)) == (new_pointer, counters + 1)
    assert r["r8"] == 1 and r["r9"] == 0
    assert (r["rax"], r["rdx"]) == (new_pointer, counters + 1)

"""The table-driven decoder: prefixes, REX, ModRM/SIB, RIP-relative, lengths, bad input."""

from __future__ import annotations

import pytest

from pyhv.accel.tcg.decoder import OPCODES, decode
from pyhv.accel.tcg.faults import GP, UD, GuestFault
import pyhv.accel.tcg.insns  # noqa: F401


def test_rex_w_sib_disp32():
    # mov rax, [rbx + rcx*8 + 0x12345678]
    i = decode(bytes.fromhex("488b84cb78563412"), 0, 0x1000, 64)
    assert (i.length, i.opsize, i.reg, i.base, i.index, i.scale, i.disp) == (8, 8, 0, 3, 1, 3, 0x12345678)


def test_rex_extends_reg_rm_index():
    # mov r9, [r10 + r11*2 - 8]
    i = decode(bytes.fromhex("4f8b4c5af8"), 0, 0, 64)
    # 64-bit displacements are in the registers' signed form (pyhv.accel.tcg.state)
    assert (i.reg, i.base, i.index, i.scale, i.disp) == (9, 10, 11, 1, -8)


def test_rip_relative_resolves_against_next_instruction():
    # lea rax, [rip + 0x10] at 0x4000, length 7
    i = decode(bytes.fromhex("488d0510000000"), 0, 0x4000, 64)
    assert i.base == -1 and i.disp == 0x4007 + 0x10


def test_operand_size_prefix_and_immediates():
    i = decode(bytes.fromhex("66b83412"), 0, 0, 64)  # mov ax, 0x1234
    assert (i.opsize, i.imm, i.length) == (2, 0x1234, 4)
    i = decode(bytes.fromhex("48b88877665544332211"), 0, 0, 64)  # movabs
    assert (i.opsize, i.imm, i.length) == (8, 0x1122334455667788, 10)
    i = decode(bytes.fromhex("4883c0ff"), 0, 0, 64)  # add rax, -1 (imm8 sign-extended)
    assert i.imm == 2 ** 64 - 1


def test_byte_registers_without_and_with_rex():
    assert decode(bytes.fromhex("88e0"), 0, 0, 64).reg == 16  # mov al, ah: AH is 16
    assert decode(bytes.fromhex("4088e0"), 0, 0, 64).reg == 4  # with REX: SPL


def test_relative_branch_target_and_16bit_wrap():
    assert decode(bytes.fromhex("ebfe"), 0, 0x5000, 64).imm == 0x5000
    assert decode(bytes.fromhex("e9fdff"), 0, 0x0, 16).imm == 0x0  # jmp rel16 wraps in 16 bits


def test_16bit_modrm_bp_defaults_to_ss():
    i = decode(bytes.fromhex("8b4602"), 0, 0, 16)  # mov ax, [bp+2]
    assert (i.base, i.index, i.seg, i.disp) == (5, -1, 2, 2)


def test_segment_override_and_64bit_null_segments():
    assert decode(bytes.fromhex("648b00"), 0, 0, 64).seg == 4  # fs:
    assert decode(bytes.fromhex("2e8b00"), 0, 0, 64).seg == -1  # cs: has no base in 64-bit mode


def test_group_opcodes_pick_handler_by_reg_field():
    assert decode(bytes.fromhex("f7d8"), 0, 0, 64).spec.name == "neg_rm"
    assert decode(bytes.fromhex("f7e0"), 0, 0, 64).spec.name == "mul"


@pytest.mark.parametrize("code,vector", [
    ("0fff", UD),  # undefined two-byte opcode
    ("8dc0", UD),  # lea with a register operand
    ("f00140", None),  # lock add [rax+..], eax is fine
    ("f001c0", UD),  # lock with a register destination
    ("f090", UD),  # lock nop
    ("66" * 14 + "90", None),  # exactly 15 bytes is allowed
    ("06", UD),  # push es is invalid in 64-bit mode
    ("66" * 15 + "90", GP),  # 15 prefixes + opcode: 16 bytes, too long
])
def test_bad_encodings_fault(code, vector):
    raw = bytes.fromhex(code) + b"\0" * 8
    if vector is None:
        decode(raw, 0, 0, 64)
        return
    with pytest.raises(GuestFault) as err:
        decode(raw, 0, 0, 64)
    assert err.value.vector == vector


def test_truncated_instruction_raises_index_error():
    with pytest.raises(IndexError):
        decode(bytes.fromhex("48b8112233"), 0, 0, 64)


def test_every_table_entry_names_a_handler():
    for op, spec in enumerate(OPCODES):
        if spec is None:
            continue
        if spec.group is None:
            assert callable(spec.handler), hex(op)
        else:
            assert any(sub is not None for sub in spec.group), hex(op)

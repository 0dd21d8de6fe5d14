"""Differential test against Unicorn (QEMU's TCG in a library) for ALU results and flags.

Skips where the ``unicorn`` package is missing (it is a test-only oracle for CPython).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

unicorn = pytest.importorskip("unicorn", reason="unicorn is not installed (pip install unicorn)")
from unicorn import x86_const as ux  # noqa: E402

from .harness import CODE, assemble, long_mode_cpu, needs_as  # noqa: E402

pytestmark = needs_as

DEFINED_FLAGS = {  # flags each instruction defines (others are architecturally undefined)
    "add": 0x8D5, "sub": 0x8D5, "adc": 0x8D5, "sbb": 0x8D5, "cmp": 0x8D5, "neg": 0x8D5,
    "and": 0x8C5, "or": 0x8C5, "xor": 0x8C5, "test": 0x8C5,
    "inc": 0x8D5, "dec": 0x8D5, "shl": 0x0C5, "shr": 0x0C5, "sar": 0x0C5,
    "rol": 0x001, "ror": 0x001, "imul": 0x801, "mul": 0x801,
}
REGS = ("rax", "rbx", "rcx", "rdx")
UC_REGS = {"rax": ux.UC_X86_REG_RAX, "rbx": ux.UC_X86_REG_RBX, "rcx": ux.UC_X86_REG_RCX,
           "rdx": ux.UC_X86_REG_RDX}

_TEMPLATES = [
    "{op} %rbx, %rax", "{op} %ebx, %eax", "{op} %bx, %ax", "{op} %bl, %al",
]
_UNARY = ["{op} %rax", "{op} %eax", "{op} %al"]
_SHIFTS = ["{op} %cl, %rax", "{op} %cl, %eax", "{op} %cl, %ax", "{op} %cl, %al", "{op} $1, %rax"]


def _programs():
    out = []
    for op in ("add", "sub", "adc", "sbb", "cmp", "and", "or", "xor", "test"):
        out += [t.format(op=op) for t in _TEMPLATES]
    for op in ("inc", "dec", "neg", "mul"):
        out += [t.format(op=op) for t in _UNARY] if op != "mul" else ["mul %rbx", "mul %ebx", "mul %bl"]
    for op in ("shl", "shr", "sar", "rol", "ror"):
        out += [t.format(op=op) for t in _SHIFTS]
    out += ["imul %rbx, %rax", "imul %ebx, %eax"]
    return out


PROGRAMS = _programs()
values = st.one_of(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF,
                                    0x8000_0000, 0xFFFF_FFFF, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1]),
                   st.integers(0, 2 ** 64 - 1))


def _unicorn_run(code: bytes, regs: dict, carry: int):
    emu = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    emu.mem_map(0x10000, 0x1000)
    emu.mem_write(0x10000, code)
    for name, value in regs.items():
        emu.reg_write(UC_REGS[name], value)
    emu.reg_write(ux.UC_X86_REG_EFLAGS, 0x2 | carry)
    emu.emu_start(0x10000, 0x10000 + len(code))
    return {name: emu.reg_read(UC_REGS[name]) for name in REGS}, emu.reg_read(ux.UC_X86_REG_EFLAGS)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(PROGRAMS), values, values, st.integers(0, 70), st.integers(0, 1))
def test_alu_matches_unicorn(program, a, b, count, carry):
    code = assemble(program)
    regs = {"rax": a, "rbx": b, "rcx": count, "rdx": 0x5555}
    expected_regs, expected_flags = _unicorn_run(code, regs, carry)
    memory, cpu = long_mode_cpu(code + b"\xf4", {**regs, "rflags": 0x2 | carry})
    cpu.run(10)
    got = cpu.registers()
    op = program.split()[0]
    mask = DEFINED_FLAGS[op]
    if op in ("shl", "shr", "sar", "rol", "ror") and "$1" in program:
        mask |= 0x800  # OF is defined for a count of one
    assert {n: got[n] for n in REGS} == expected_regs, program
    assert got["rflags"] & mask == expected_flags & mask, (program, hex(got["rflags"]), hex(expected_flags))

"""Linear addresses wrap around the 64-bit space: offset + segment base is taken modulo 2**64.

Static glibc (busybox) reads its thread-locals at negative offsets from FS, ``mov %fs:(%rax)``
with rax = -0x90: the sum of the FS base and that offset passes 2**64 and must wrap to
FS base - 0x90, not raise #GP as a non-canonical address.
"""

from __future__ import annotations

import pytest

from .harness import long_mode_cpu, needs_as, assemble, run_to_hlt

FS_BASE = 0x20_0000
VALUE = 0x1122_3344_5566_7788


def set_base_and_access(msr: int, seg: str, iterations: int) -> str:
    # The loop runs the access often enough for the block to be translated as well as interpreted.
    return f"""
        mov ${msr:#x}, %ecx
        mov ${FS_BASE:#x}, %eax
        xor %edx, %edx
        wrmsr
        mov ${iterations}, %r8d
        mov $-0x90, %rax
    1:  mov %{seg}:(%rax), %rbx
        mov %rbx, %{seg}:8(%rax)
        mov %{seg}:8(%rax), %rsi
        dec %r8d
        jnz 1b
        hlt
    """


@needs_as
@pytest.mark.parametrize("msr,seg", [(0xC000_0100, "fs"), (0xC000_0101, "gs")])
@pytest.mark.parametrize("iterations", [1, 100])
def test_negative_offset_from_a_segment_base_wraps(msr: int, seg: str, iterations: int) -> None:
    memory, cpu = long_mode_cpu(assemble(set_base_and_access(msr, seg, iterations)))
    memory.write_u64(FS_BASE - 0x90, VALUE)
    run_to_hlt(cpu)
    regs = cpu.registers()
    assert regs["r15"] == 0, f"exception vector {regs['r15']} taken"  # handlers set r15
    assert regs["rbx"] == VALUE
    assert memory.read_u64(FS_BASE - 0x88) == VALUE
    assert regs["rsi"] == VALUE  # with a displacement too

"""Exceptions through the IDT: #PF (error code, CR2), #GP, #UD, #DE, int n, privilege change
with stack switch, IST, double and triple fault."""

from __future__ import annotations

from pyhv.accel.tcg import StopReason

from .harness import CODE, PD, PML4, assemble, long_mode_cpu, needs_as, protected_mode_cpu, run_to_hlt

pytestmark = needs_as


def _frame(memory, cpu, words: int):
    rsp = cpu.registers()["rsp"]
    return [memory.read_u64(rsp + 8 * k) for k in range(words)]


def test_divide_by_zero_delivers_de_at_faulting_rip():
    code = assemble("xor %ecx, %ecx\ndiv %rcx\nhlt")
    memory, cpu = long_mode_cpu(code)
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["r15"] == 0
    rip, cs, rflags, rsp, ss = _frame(memory, cpu, 5)
    assert rip == CODE + 2 and cs == 0x08 and rsp == 0x80000


def test_quotient_overflow_is_de():
    memory, cpu = long_mode_cpu(assemble("mov $1, %edx\nmov $1, %ecx\ndiv %ecx\nhlt"))
    run_to_hlt(cpu)
    assert cpu.registers()["r15"] == 0


def test_ud2_and_undefined_opcode_are_ud():
    for src in ("ud2", ".byte 0x0f, 0xff"):
        memory, cpu = long_mode_cpu(assemble(src + "\nhlt"))
        run_to_hlt(cpu)
        assert cpu.registers()["r15"] == 6
        assert _frame(memory, cpu, 1)[0] == CODE


def test_page_fault_not_present_write_sets_cr2_and_error_code():
    # 0x400000 lies beyond the 2 entries mapped for a 4 MiB guest: not present.
    memory, cpu = long_mode_cpu(assemble("movq $1, 0x400010\nhlt"))
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["r15"] == 14 and r["cr2"] == 0x400010
    error, rip = _frame(memory, cpu, 2)
    assert error == 0b010 and rip == CODE


def test_page_fault_protection_on_read_only_page_with_wp():
    memory, cpu = long_mode_cpu(assemble("movq $1, 0x200000\nhlt"))
    memory.write_u64(PD + 8, 0x200000 | 0x85)  # present, user, no write
    cpu.set_registers({"cr0": cpu.registers()["cr0"] | (1 << 16)})
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["r15"] == 14 and r["cr2"] == 0x200000
    assert _frame(memory, cpu, 1)[0] == 0b011


def test_fetch_from_nx_page_faults_with_fetch_bit():
    memory, cpu = long_mode_cpu(assemble("mov $0x200000, %eax\njmp *%rax"))
    memory.write_u64(PD + 8, 0x200000 | 0x87 | (1 << 63))
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["r15"] == 14 and r["cr2"] == 0x200000
    error, rip = _frame(memory, cpu, 2)
    assert error == 0b10001 and rip == 0x200000


def test_accessed_and_dirty_bits_written_back():
    memory, cpu = long_mode_cpu(assemble("movq $1, 0x200008\nhlt"))
    run_to_hlt(cpu)
    pde = memory.read_u64(PD + 8)
    assert pde & 0x20 and pde & 0x40
    assert memory.read_u64(PML4) & 0x20


def test_tlb_keeps_stale_mapping_until_invlpg():
    src = """
        mov 0x200000, %rax
        movq $0x87, (%rbx)
        mov 0x200000, %rcx
        invlpg 0x200000
        mov 0x200000, %rdx
        hlt"""
    memory, cpu = long_mode_cpu(assemble(src), {"rbx": PD + 8})
    memory.write_u64(0x200000, 0x11)
    memory.write_u64(0x000000, 0x22)
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["rax"] == 0x11 and r["rcx"] == 0x11  # stale until invlpg, as on hardware
    assert r["rdx"] == 0x22


def test_cr3_write_flushes_non_global_entries():
    src = """
        mov 0x200000, %rax
        movq $0x87, (%rbx)
        mov 0x200000, %rcx
        mov %cr3, %rdx
        mov %rdx, %cr3
        mov 0x200000, %rdx
        hlt"""
    memory, cpu = long_mode_cpu(assemble(src), {"rbx": PD + 8})
    memory.write_u64(0x200000, 0xAAAA)
    memory.write_u64(0x000000, 0xBBBB)
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["rax"] == 0xAAAA and r["rcx"] == 0xAAAA and r["rdx"] == 0xBBBB


def test_page_crossing_access_spans_two_pages():
    memory, cpu = long_mode_cpu(assemble("mov $0x11223344556677, %rax\nmov %rax, 0x20ffd\nmov 0x20ffd, %rbx\nhlt"))
    run_to_hlt(cpu)
    assert cpu.registers()["rbx"] == 0x11223344556677
    assert memory.read(0x20FFD, 8) == (0x11223344556677).to_bytes(8, "little")


def test_page_crossing_write_faults_before_writing_anything():
    memory, cpu = long_mode_cpu(assemble("movq $-1, 0x3ffffc\nhlt"))
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["r15"] == 14 and r["cr2"] == 0x400000
    assert memory.read_u32(0x3FFFFC) == 0


def test_general_protection_on_privileged_instruction_in_user_mode():
    src = """
        mov %rsp, %rcx
        pushq $0x2b
        pushq %rcx
        pushfq
        pushq $0x23
        lea user(%rip), %rax
        pushq %rax
        iretq
    user:
        mov $1, %ebx
        hlt"""
    memory, cpu = long_mode_cpu(assemble(src))
    for k in range(4):  # make the PD entries user-accessible
        memory.write_u64(PD + 8 * k, memory.read_u64(PD + 8 * k) | 0x4)
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["rbx"] == 1 and r["r15"] == 13 and r["cpl"] == 0
    # Stack switched to TSS.RSP0 = 0x70000 and the frame names the user context.
    error, rip, cs, rflags, rsp, ss = [memory.read_u64(0x70000 - 48 + 8 * k) for k in range(6)]
    assert r["rsp"] == 0x70000 - 48
    assert error == 0 and cs == 0x23 and ss == 0x2B and rsp == 0x80000


def test_int_n_trap_returns_after_instruction_and_ist_stack():
    memory, cpu = long_mode_cpu(assemble("int $0x40\nhlt"))
    gate_high = memory.read_u64(0x4000 + 16 * 0x40)
    memory.write_u64(0x4000 + 16 * 0x40, gate_high | (1 << 32))  # IST1
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["r15"] == 0x40 and r["rsp"] == 0x60000 - 40
    assert memory.read_u64(r["rsp"]) == CODE + 2


def test_fault_on_missing_gate_escalates_to_double_fault():
    memory, cpu = long_mode_cpu(assemble("ud2"))
    gate = memory.read_u64(0x4000 + 16 * 6)
    memory.write_u64(0x4000 + 16 * 6, gate & ~(1 << 47))  # #UD gate not present
    run_to_hlt(cpu)
    # #UD is benign: the #NP is delivered, not a #DF.
    assert cpu.registers()["r15"] == 11
    memory, cpu = long_mode_cpu(assemble("xor %ecx, %ecx\ndiv %ecx"))
    memory.write_u64(0x4000 + 16 * 0, 0)  # #DE gate invalid: #GP after #DE is a #DF
    run_to_hlt(cpu)
    assert cpu.registers()["r15"] == 8


def test_triple_fault_ends_run_with_shutdown():
    memory, cpu = long_mode_cpu(assemble("xor %ecx, %ecx\ndiv %ecx"))
    cpu.set_registers({"idt": (0x4000, 0)})
    result = cpu.run(1000)
    assert result.reason == StopReason.SHUTDOWN and "triple fault" in result.detail
    assert cpu.run(10).reason == StopReason.SHUTDOWN


def test_protected_mode_exception_pushes_32bit_frame():
    memory, cpu = protected_mode_cpu(assemble("ud2", bits=32))
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["rax"] == 6
    esp = r["rsp"]
    assert [memory.read_u32(esp + 4 * k) for k in range(2)] == [CODE, 0x18]
    assert esp == 0x80000 - 12

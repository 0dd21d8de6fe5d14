"""Control flow, stack, string ops, port I/O, self-modifying code, real and protected mode."""

from __future__ import annotations

from pyhv.accel.tcg import StopReason

from .harness import CODE, assemble, long_mode_cpu, needs_as, protected_mode_cpu, real_mode_cpu, run_asm, run_to_hlt

pytestmark = needs_as


class Port:
    def __init__(self):
        self.written = []

    def read(self, offset, size):
        return 0xA5A5A5A5 & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        self.written.append((offset, size, value))


def test_counting_loop_call_ret_and_leave():
    src = """
        xor %eax, %eax
        mov $10, %ecx
    again:
        call add3
        loop again
        jmp done
    add3:
        push %rbp
        mov %rsp, %rbp
        sub $16, %rsp
        add $3, %eax
        leave
        ret
    done:"""
    _, cpu = run_asm(src)
    r = cpu.registers()
    assert r["rax"] == 30 and r["rsp"] == 0x80000 and r["rcx"] == 0


def test_rep_movsb_stosq_and_repne_scasb():
    src = """
        mov $0x20000, %rdi
        mov $0x1122334455667788, %rax
        mov $4, %ecx
        rep stosq
        mov $0x20000, %rsi
        mov $0x21000, %rdi
        mov $32, %ecx
        rep movsb
        mov $0x21000, %rdi
        mov $0x55, %al
        mov $32, %ecx
        repne scasb"""
    memory, cpu = run_asm(src)
    assert memory.read(0x21000, 32) == (0x1122334455667788).to_bytes(8, "little") * 4
    r = cpu.registers()
    assert r["rdi"] == 0x21000 + 4 and r["rcx"] == 28


def test_std_reverses_string_direction():
    memory, cpu = run_asm("std\nmov $0x20010, %rdi\nmov $3, %ecx\nmov $0xAB, %al\nrep stosb\ncld")
    assert memory.read(0x2000E, 3) == b"\xab\xab\xab" and cpu.registers()["rdi"] == 0x2000D


def test_port_io_reaches_the_pio_bus():
    memory, cpu = long_mode_cpu(assemble("mov $0x3f8, %dx\nmov $0x41, %al\nout %al, %dx\nin $0x60, %al\nhlt"))
    port = Port()
    cpu.pio_bus.attach(0x3F8, 8, port)
    cpu.pio_bus.attach(0x60, 1, port)
    run_to_hlt(cpu)
    assert port.written == [(0, 1, 0x41)]
    assert cpu.registers()["rax"] & 0xFF == 0xA5


def test_self_modifying_code_is_retranslated():
    src = """
        mov $1, %eax
        lea patch(%rip), %rbx
        movb $7, 1(%rbx)
    patch:
        mov $2, %al
        hlt"""
    _, cpu = run_asm(src)
    assert cpu.registers()["rax"] & 0xFF == 7


def test_block_cache_sees_code_rewritten_between_runs():
    memory, cpu = long_mode_cpu(assemble("mov $1, %eax\nhlt"))
    run_to_hlt(cpu)
    assert cpu.registers()["rax"] == 1
    cpu.set_registers({"rip": CODE})
    code = assemble("mov $2, %eax\nhlt")
    cpu.mmu.write(CODE, 1, code[0])
    cpu.mmu.write(CODE + 1, 4, int.from_bytes(code[1:5], "little"))
    run_to_hlt(cpu)
    assert cpu.registers()["rax"] == 2


def test_budget_stops_exactly():
    memory, cpu = long_mode_cpu(assemble("1: inc %rax\njmp 1b"))
    result = cpu.run(1001)
    assert result.reason == StopReason.BUDGET and result.instructions == 1001
    assert cpu.registers()["rax"] == 501


def test_syscall_sysret_round_trip():
    src = """
        mov $0xC0000081, %ecx
        xor %eax, %eax
        mov $0x00100008, %edx   # sysret base 0x10 (+16 = user CS 0x20), syscall CS 0x08
        wrmsr
        mov $0xC0000082, %ecx
        lea entry(%rip), %rax
        xor %edx, %edx
        wrmsr
        lea after(%rip), %rcx
        mov $0x202, %r11
        sysretq
    after:
        mov $42, %edi
        syscall
    entry:
        hlt"""
    memory, cpu = long_mode_cpu(assemble(src))
    for k in range(2):
        memory.write_u64(0x3000 + 8 * k, memory.read_u64(0x3000 + 8 * k) | 4)
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["rdi"] == 42 and r["cpl"] == 0 and r["cs"]["selector"] == 0x08
    assert r["r11"] & 0x200 and r["rcx"] > CODE


def test_protected_mode_32bit_code():
    src = """
        mov $0x12345678, %eax
        mov $0x20000, %ebx
        mov %eax, (%ebx)
        movzbl 1(%ebx), %ecx
        movsbl 3(%ebx), %edx
        pushl $7
        popl %esi
        hlt"""
    memory, cpu = protected_mode_cpu(assemble(src, bits=32))
    run_to_hlt(cpu)
    r = cpu.registers()
    assert memory.read_u32(0x20000) == 0x12345678
    assert r["rcx"] == 0x56 and r["rdx"] == 0x12 and r["rsi"] == 7 and r["rsp"] == 0x80000


def test_real_mode_segments_and_16bit_addressing():
    src = """
        mov $0x2000, %ax
        mov %ax, %ds
        mov $0x10, %bx
        mov $0x4, %si
        movw $0xBEEF, (%bx,%si)
        mov (%bx,%si), %dx
        push %dx
        pop %cx
        hlt"""
    memory, cpu = real_mode_cpu(assemble(src, bits=16))
    run_to_hlt(cpu)
    r = cpu.registers()
    assert memory.read_u16(0x20014) == 0xBEEF
    assert r["rcx"] == 0xBEEF and r["rsp"] == 0xFFF0


def test_real_mode_int_uses_ivt_and_iret_returns():
    src = """
        int $0x21
        mov $5, %bx
        hlt
    handler:
        mov $9, %ax
        iret"""
    code = assemble(src, bits=16)
    memory, cpu = real_mode_cpu(code)
    handler = code.index(b"\xb8\x09\x00")
    memory.write_u32(0x21 * 4, ((CODE >> 4) << 16) | handler)
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["rax"] == 9 and r["rbx"] == 5 and r["rsp"] == 0xFFF0


def test_real_to_protected_to_long_mode_switch():
    # The path a multiboot or real-mode loader takes: lgdt, CR0.PE, far jump, PAE, EFER.LME, CR0.PG.
    memory, cpu = long_mode_cpu(b"")
    src32 = """
        mov %cr4, %eax
        or $0x20, %eax
        mov %eax, %cr4
        mov $0x1000, %eax
        mov %eax, %cr3
        mov $0xC0000080, %ecx
        rdmsr
        or $0x100, %eax
        wrmsr
        mov %cr0, %eax
        or $0x80000000, %eax
        mov %eax, %cr0
        ljmp $0x08, $0x10100
    """
    memory.write(CODE, assemble(src32, bits=32))
    memory.write(0x10100, assemble("mov $0x1122334455, %rax\nhlt"))
    cpu.set_registers({"cr0": 0x11, "cr4": 0, "efer": 0, "rip": CODE,
                       "cs": {**cpu.registers()["cs"], "selector": 0x18, "l": 0, "db": 1}})
    run_to_hlt(cpu)
    r = cpu.registers()
    assert r["rax"] == 0x1122334455 and r["efer"] & 0x400 and r["cs"]["l"] == 1

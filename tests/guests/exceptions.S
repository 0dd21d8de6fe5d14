/*
 * exceptions: takes #DE, #UD, #GP and two #PF in long mode, and resumes after each.
 *
 * Before each faulting instruction the guest records where it is and where to resume.
 * The common handler prints the vector, the error code (#GP, #PF) and CR2 (#PF), checks
 * that the pushed RIP is the faulting instruction (faults, unlike traps, point at it),
 * and returns to the resume point through iretq.
 */
        .include "common.inc"

        .set VECTOR_DE, 0
        .set VECTOR_UD, 6
        .set VECTOR_GP, 13
        .set VECTOR_PF, 14
        .set BAD_SELECTOR, 0x1230                       /* GDT index 0x246: past the limit */
        .set READ_ONLY_WINDOW, 0x40000000               /* PDPT[1]: 2 MiB read-only page */
        .set UNMAPPED_ADDRESS, 0x80000000               /* PDPT[2]: not present */
        .set EXPECTED_FAULTS, 5

/* EXPECT_FAULT insn: runs insn, which must fault; the handler resumes after it. */
        .macro EXPECT_FAULT insn:vararg
        movl $.Lfault\@, expected_fault_rip(%rip)
        movl $.Lresume\@, resume_rip(%rip)
.Lfault\@:
        \insn
.Lresume\@:
        .endm

main32:
        ENTER_LONG_MODE main64

        .code64
main64:
        LONG_MODE_PROLOGUE
        call idt_init64
        mov $VECTOR_DE, %edi
        mov $divide_error_stub, %esi
        call idt_set_gate64
        mov $VECTOR_UD, %edi
        mov $invalid_opcode_stub, %esi
        call idt_set_gate64
        mov $VECTOR_GP, %edi
        mov $general_protection_stub, %esi
        call idt_set_gate64
        mov $VECTOR_PF, %edi
        mov $page_fault_stub, %esi
        call idt_set_gate64

        /* A read-only 2 MiB page at READ_ONLY_WINDOW; CR0.WP makes kernel writes fault. */
        mov $pd_read_only, %eax
        or $(PTE_PRESENT + PTE_WRITABLE), %eax
        mov %eax, pdpt + 8(%rip)
        movl $(PTE_PRESENT + PTE_HUGE), pd_read_only(%rip)
        mov %cr3, %rax
        mov %rax, %cr3

        xor %ecx, %ecx
        mov $7, %eax
        xor %edx, %edx
        EXPECT_FAULT div %ecx

        EXPECT_FAULT ud2

        mov $BAD_SELECTOR, %eax
        EXPECT_FAULT mov %eax, %ds
        mov $SEL_DATA, %eax
        mov %eax, %ds

        mov $UNMAPPED_ADDRESS, %ebx
        EXPECT_FAULT mov (%rbx), %eax

        mov $(READ_ONLY_WINDOW + 0x1234), %ebx
        mov (%rbx), %eax                                /* reading the page is allowed */
        EXPECT_FAULT movl $1, (%rbx)

        PRINT 64, "exceptions taken: "
        mov faults_taken(%rip), %eax
        call putdec64
        PRINT 64, "\n"
        cmpl $EXPECTED_FAULTS, faults_taken(%rip)
        jne 1f
        cmpl $0, bad_rips(%rip)
        jne 1f
        EXIT EXIT_OK
1:      EXIT EXIT_FAIL

/* Stubs make every frame alike: vector, error code (0 when the CPU pushes none), RIP... */
divide_error_stub:
        push $0
        push $VECTOR_DE
        jmp fault_common
invalid_opcode_stub:
        push $0
        push $VECTOR_UD
        jmp fault_common
general_protection_stub:
        push $VECTOR_GP
        jmp fault_common
page_fault_stub:
        push $VECTOR_PF
        jmp fault_common

        .set FRAME_VECTOR, 0
        .set FRAME_ERROR, 8
        .set FRAME_RIP, 16
        .set SAVED_REGISTERS, 3 * 8

fault_common:
        push %rax
        push %rbx
        push %rsi
        mov SAVED_REGISTERS + FRAME_VECTOR(%rsp), %ebx
        mov $name_de, %esi
        cmp $VECTOR_UD, %ebx
        jne 1f
        mov $name_ud, %esi
1:      cmp $VECTOR_GP, %ebx
        jne 2f
        mov $name_gp, %esi
2:      cmp $VECTOR_PF, %ebx
        jne 3f
        mov $name_pf, %esi
3:      call puts64
        PRINT 64, " vector="
        mov %ebx, %eax
        call putdec64
        cmp $VECTOR_GP, %ebx
        jb 4f
        PRINT 64, " error="
        mov SAVED_REGISTERS + FRAME_ERROR(%rsp), %rax
        call puthex64
4:      cmp $VECTOR_PF, %ebx
        jne 5f
        PRINT 64, " cr2="
        mov %cr2, %rax
        call puthex64
5:      mov SAVED_REGISTERS + FRAME_RIP(%rsp), %rax
        mov expected_fault_rip(%rip), %ebx
        cmp %rbx, %rax
        jne 6f
        PRINT 64, " rip=faulting instruction\n"
        jmp 7f
6:      PRINT 64, " rip="
        call puthex64
        PRINT 64, " expected "
        mov %rbx, %rax
        call puthex64
        PRINT 64, "\n"
        incl bad_rips(%rip)
7:      incl faults_taken(%rip)
        mov resume_rip(%rip), %eax
        mov %rax, SAVED_REGISTERS + FRAME_RIP(%rsp)
        pop %rsi
        pop %rbx
        pop %rax
        add $16, %rsp                                   /* vector and error code */
        iretq
        .code32

        .section .rodata
name_de:
        .asciz "#DE"
name_ud:
        .asciz "#UD"
name_gp:
        .asciz "#GP"
name_pf:
        .asciz "#PF"

        .data
expected_fault_rip:
        .long 0
resume_rip:
        .long 0
faults_taken:
        .long 0
bad_rips:
        .long 0

        .bss
        .balign 4096
pd_read_only:
        .skip 4096

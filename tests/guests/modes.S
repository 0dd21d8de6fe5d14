/*
 * modes: walks the CPU through its modes and reports, from each, state read back from the
 * CPU itself: 32-bit protected mode, 16-bit protected mode, 16-bit real mode (printing with
 * port I/O only), protected mode again, then long mode with 4-level paging.
 *
 * The real-mode part runs below 1 MiB, where a real-mode CS can reach: it is copied to
 * LOW_STUB_BASE and refers to its own labels only as offsets from its start (the 16-bit
 * code segment and the real-mode CS are both based there).
 */
        .include "common.inc"

        .set REAL_MODE_SEGMENT, LOW_STUB_BASE >> 4
        .set REAL_MODE_STACK_TOP, 0xfff0                /* SS = CS: just under 0x18000 */
        .set PM16_STACK_TOP, LOW_STUB_BASE - 0x10       /* SS base 0: just under the stub */

main32:
        PRINT 32, "protected mode: cr0.pe="
        mov %cr0, %eax
        and $CR0_PE, %eax
        call putdec32
        PRINT 32, " cs="
        mov %cs, %eax
        call puthex32
        PRINT 32, "\n"

        mov $real_mode_stub, %esi
        mov $LOW_STUB_BASE, %edi
        mov $(real_mode_stub_end - real_mode_stub), %ecx
        rep movsb
        movl $0, real_mode_marker
        mov %esp, saved_esp
        ljmp $SEL_CODE16, $0

back_in_protected_mode:
        mov $SEL_DATA, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        mov saved_esp, %esp
        PRINT 32, "protected mode again: cr0.pe="
        mov %cr0, %eax
        and $CR0_PE, %eax
        call putdec32
        PRINT 32, " real-mode marker="
        mov real_mode_marker, %eax
        call puthex32
        PRINT 32, "\n"
        ENTER_LONG_MODE main64

        .code64
main64:
        LONG_MODE_PROLOGUE
        PRINT 64, "long mode: efer.lma="
        mov $MSR_EFER, %ecx
        rdmsr
        shr $10, %eax
        and $1, %eax
        call putdec64
        PRINT 64, " cr4.pae="
        mov %cr4, %rax
        shr $5, %rax
        and $1, %eax
        call putdec64
        PRINT 64, " cr0.pg="
        mov %cr0, %rax
        shr $31, %rax
        and $1, %eax
        call putdec64
        PRINT 64, " 64-bit arithmetic="
        mov $1, %eax
        shl $40, %rax                                   /* would be 0 in 32-bit registers */
        call puthex64
        PRINT 64, "\n"
        EXIT EXIT_OK

/* ---- copied to LOW_STUB_BASE; labels below are used only as offsets from the start ---- */
        .code16
real_mode_stub:
        /* 16-bit protected mode: CS is SEL_CODE16 (base LOW_STUB_BASE). */
        mov $SEL_DATA16, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $PM16_STACK_TOP, %sp
        mov $(pm16_message - real_mode_stub + LOW_STUB_BASE), %si
        call stub_puts
        mov %cs, %bx                                    /* the selector SEL_CODE16 */
        call stub_puthex16
        mov %cr0, %eax
        and $~CR0_PE, %eax
        mov %eax, %cr0
        ljmp $REAL_MODE_SEGMENT, $(real_mode_entry - real_mode_stub)

real_mode_entry:
        mov %cs, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $REAL_MODE_STACK_TOP, %sp
        mov $(real_mode_message - real_mode_stub), %si
        call stub_puts
        mov %cr0, %eax
        and $CR0_PE, %al
        add $'0', %al
        call stub_putc
        mov $(real_mode_cs_message - real_mode_stub), %si
        call stub_puts
        mov %cs, %bx                                    /* a paragraph number, not a selector */
        call stub_puthex16
        /* A far pointer write only real-mode segmentation gets right: 0x1000:0x0010 = 0x10010. */
        mov $0x1000, %ax
        mov %ax, %es
        movl $0x1234abcd, %es:0x0010
        mov %cs, %ax
        mov %ax, %es

        cli
        mov %cr0, %eax
        or $CR0_PE, %eax
        mov %eax, %cr0
        ljmpl $SEL_CODE32, $back_in_protected_mode

/* stub_puthex16: writes BX as 4 hex digits and a newline. */
stub_puthex16:
        push %ax
        push %cx
        mov $4, %cx
1:      rol $4, %bx
        mov %bl, %al
        and $0x0f, %al
        add $'0', %al
        cmp $'9', %al
        jbe 2f
        add $('a' - '9' - 1), %al
2:      call stub_putc
        loop 1b
        mov $'\n', %al
        call stub_putc
        pop %cx
        pop %ax
        ret

/* stub_puts: writes the string at DS:SI. stub_putc: writes AL. */
stub_puts:
        lodsb
        test %al, %al
        jz 1f
        call stub_putc
        jmp stub_puts
1:      ret

stub_putc:
        push %dx
        push %cx
        push %ax
        mov $0xffff, %cx
        mov $(COM1 + UART_LSR), %dx
1:      in %dx, %al
        test $UART_LSR_THRE, %al
        jnz 2f
        loop 1b
2:      pop %ax
        pop %cx
        mov $(COM1 + UART_THR), %dx
        out %al, %dx
        pop %dx
        ret

pm16_message:
        .asciz "16-bit protected mode: cs=0x"
real_mode_message:
        .asciz "real mode: cr0.pe="
real_mode_cs_message:
        .asciz " cs=0x"
real_mode_stub_end:
        .code32

        .set real_mode_marker, 0x10010

        .data
saved_esp:
        .long 0

/*
 * hlt_timer: counts PIT ticks through the 8259 PIC in long mode, halting between them.
 *
 * The PIC pair is remapped to vectors 0x20/0x28 with only IRQ0 unmasked, PIT channel 0
 * runs as a rate generator at about 1 kHz, and the CPU sits in `sti; hlt` until the
 * handler has counted `ticks=K` interrupts (default 100). The handler masks IRQ0 at the
 * K-th tick, so the count printed is exact, and the guest reads the mask back.
 * Interrupts are taken in long mode: nested KVM here cannot deliver them in 32-bit mode.
 */
        .include "common.inc"

        .set PIC1_COMMAND, 0x20
        .set PIC1_DATA, 0x21
        .set PIC2_COMMAND, 0xa0
        .set PIC2_DATA, 0xa1
        .set PIC_ICW1_INIT_ICW4, 0x11                   /* edge triggered, cascade, ICW4 follows */
        .set PIC_ICW4_8086, 0x01
        .set PIC_EOI, 0x20
        .set PIC1_VECTOR_BASE, 0x20
        .set PIC2_VECTOR_BASE, 0x28
        .set PIT_CHANNEL0, 0x40
        .set PIT_COMMAND, 0x43
        .set PIT_CH0_RATE_GENERATOR, 0x34               /* channel 0, lobyte/hibyte, mode 2 */
        .set PIT_DIVISOR_1KHZ, 1193                     /* 1.193182 MHz / 1193 */

main32:
        mov $ticks_key, %edi
        mov $100, %eax
        call cmdline_uint32
        mov %eax, tick_target
        ENTER_LONG_MODE main64

        .code64
main64:
        LONG_MODE_PROLOGUE
        call idt_init64
        mov $PIC1_VECTOR_BASE, %edi
        mov $timer_interrupt, %esi
        call idt_set_gate64

        mov $PIC_ICW1_INIT_ICW4, %al
        out %al, $PIC1_COMMAND
        out %al, $PIC2_COMMAND
        mov $PIC1_VECTOR_BASE, %al
        out %al, $PIC1_DATA
        mov $PIC2_VECTOR_BASE, %al
        out %al, $PIC2_DATA
        mov $0x04, %al                                  /* ICW3: slave on IRQ2 */
        out %al, $PIC1_DATA
        mov $0x02, %al                                  /* ICW3: slave identity 2 */
        out %al, $PIC2_DATA
        mov $PIC_ICW4_8086, %al
        out %al, $PIC1_DATA
        out %al, $PIC2_DATA
        mov $0xfe, %al                                  /* only IRQ0 */
        out %al, $PIC1_DATA
        mov $0xff, %al
        out %al, $PIC2_DATA
        PRINT 64, "pic: remapped to 0x20/0x28, imr="
        xor %eax, %eax
        in $PIC1_DATA, %al
        call puthex64
        PRINT 64, "\n"

        mov $PIT_CH0_RATE_GENERATOR, %al
        out %al, $PIT_COMMAND
        mov $(PIT_DIVISOR_1KHZ & 0xff), %al
        out %al, $PIT_CHANNEL0
        mov $(PIT_DIVISOR_1KHZ >> 8), %al
        out %al, $PIT_CHANNEL0
        PRINT 64, "pit: channel 0 at 1 kHz, waiting for "
        mov tick_target(%rip), %eax
        call putdec64
        PRINT 64, " ticks\n"

1:      sti
        hlt
        cli
        incl halt_wakeups(%rip)
        mov ticks(%rip), %eax
        cmp tick_target(%rip), %eax
        jb 1b

        PRINT 64, "timer ticks: "
        mov ticks(%rip), %eax
        call putdec64
        PRINT 64, "\npic: imr after the last tick="
        xor %eax, %eax
        in $PIC1_DATA, %al
        call puthex64
        PRINT 64, "\n"
        /* Each hlt must have slept until an interrupt: more wake-ups than ticks means not. */
        mov halt_wakeups(%rip), %eax
        cmp ticks(%rip), %eax
        jbe 2f
        PRINT 64, "hlt returned without an interrupt, wake-ups: "
        call putdec64
        PRINT 64, "\n"
        EXIT EXIT_FAIL
2:      EXIT EXIT_OK

timer_interrupt:
        push %rax
        incl ticks(%rip)
        mov ticks(%rip), %eax
        cmp tick_target(%rip), %eax
        jb 1f
        mov $0xff, %al                                  /* the last tick: mask IRQ0 too */
        out %al, $PIC1_DATA
1:      mov $PIC_EOI, %al
        out %al, $PIC1_COMMAND
        pop %rax
        iretq
        .code32

        .section .rodata
ticks_key:
        .asciz "ticks="

        .data
tick_target:
        .long 0
ticks:
        .long 0
halt_wakeups:
        .long 0

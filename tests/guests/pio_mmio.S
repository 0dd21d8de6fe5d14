/*
 * pio_mmio: exits to the VMM through port I/O and MMIO where no device answers.
 *
 * Command line (decimal): pio=N   N byte OUTs to UNCLAIMED_PORT         (default 1000)
 *                         mmio=N  N dword writes to UNCLAIMED_MMIO      (default 1000)
 *                         reads=N N reads of each size (1, 2, 4 bytes) from both (default 16)
 * Port reads must return all ones, as on a PC's ISA/LPC bus. MMIO reads must all return
 * the same floating value: all ones as a PCI master abort gives on hardware (and pyhv), or
 * all zeros, which QEMU's unassigned-memory handler returns; the guest says which it saw.
 * The loops print nothing; a line goes out before the first loop and after each, so
 * bench/exit_latency.py can time each loop from the serial output alone, without the VMM's
 * start-up (a pio=0 mmio=0 run gives the cost of the lines themselves, to subtract). Runs in 32-bit protected mode: nothing here needs more.
 */
        .include "common.inc"

        .set UNCLAIMED_PORT, 0x3e0                      /* nothing on a PC (or QEMU's pc) here */
        .set UNCLAIMED_MMIO, 0xd0000000                 /* PCI hole, no BAR placed there */

main32:
        mov $pio_key, %edi
        mov $1000, %eax
        call cmdline_uint32
        mov %eax, pio_count
        mov $mmio_key, %edi
        mov $1000, %eax
        call cmdline_uint32
        mov %eax, mmio_count
        mov $reads_key, %edi
        mov $16, %eax
        call cmdline_uint32
        mov %eax, read_count

        /* Each line goes out as soon as its loop ends: the benchmark times the gaps. */
        PRINT 32, "exit loops: start\n"
        mov pio_count, %ecx
        mov $UNCLAIMED_PORT, %dx
        mov $0x5a, %al
        test %ecx, %ecx
        jz 2f
1:      out %al, %dx
        dec %ecx
        jnz 1b
2:      PRINT 32, "pio writes: "
        mov pio_count, %eax
        call putdec32
        PRINT 32, "\n"
        mov mmio_count, %ecx
        mov $0x5a5a5a5a, %eax
        test %ecx, %ecx
        jz 4f
3:      mov %eax, UNCLAIMED_MMIO
        dec %ecx
        jnz 3b
4:      PRINT 32, "mmio writes: "
        mov mmio_count, %eax
        call putdec32
        PRINT 32, "\n"

        mov read_count, %ecx
        test %ecx, %ecx
        jz 6f
5:      mov $UNCLAIMED_PORT, %dx
        xor %eax, %eax
        inb %dx, %al
        cmp $0xff, %eax
        jne bad_pio_read
        xor %eax, %eax
        inw %dx, %ax
        cmp $0xffff, %eax
        jne bad_pio_read
        xor %eax, %eax
        inl %dx, %eax
        cmp $0xffffffff, %eax
        jne bad_pio_read
        /* The first MMIO byte read picks the floating value that every later read must match. */
        movzbl UNCLAIMED_MMIO, %eax
        cmpl $-1, mmio_float_byte
        jne 7f
        cmp $0xff, %eax
        je 8f
        test %eax, %eax
        jne bad_mmio_read
8:      mov %eax, mmio_float_byte
7:      cmp mmio_float_byte, %eax
        jne bad_mmio_read
        movsbl %al, %ebx                                /* 0xff -> all ones, 0 -> 0 */
        movzwl UNCLAIMED_MMIO, %eax
        movzwl %bx, %edi
        cmp %edi, %eax
        jne bad_mmio_read
        mov UNCLAIMED_MMIO, %eax
        cmp %ebx, %eax
        jne bad_mmio_read
        dec %ecx
        jnz 5b
6:      PRINT 32, "pio reads: "
        mov read_count, %eax
        call putdec32
        test %eax, %eax
        jz 7f
        PRINT 32, " x 3 sizes, all ones"
7:      PRINT 32, "\nmmio reads: "
        call putdec32
        test %eax, %eax
        jz 9f
        PRINT 32, " x 3 sizes, "
        cmpl $0, mmio_float_byte
        jne 8f
        PRINT 32, "all zeros"
        jmp 9f
8:      PRINT 32, "all ones"
9:      PRINT 32, "\n"
        EXIT EXIT_OK

bad_pio_read:
        PRINT 32, "pio read of an unclaimed port returned "
        jmp 1f
bad_mmio_read:
        PRINT 32, "mmio read of an unclaimed address returned "
1:      call puthex32
        PRINT 32, "\n"
        EXIT EXIT_FAIL

        .section .rodata
pio_key:
        .asciz "pio="
mmio_key:
        .asciz "mmio="
reads_key:
        .asciz "reads="

        .data
pio_count:
        .long 0
mmio_count:
        .long 0
read_count:
        .long 0
mmio_float_byte:
        .long -1

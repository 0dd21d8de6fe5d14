/*
 * mips: CPU-bound work in long mode, for measuring a CPU's guest instructions per second.
 *
 * Command line (decimal): iters=N   iterations of each loop (default 1000000, 0 allowed)
 *
 * Two loops run N iterations each, with interrupts off and no exits inside:
 * - the tight loop, TIGHT_LOOP_INSNS (5) instructions per iteration, all register ALU work;
 * - the kernel-like loop, KERNEL_LOOP_INSNS (23) instructions per iteration: an indexed load
 *   and store into a 2 KiB table, a call to a function that pushes, multiplies and rotates,
 *   and two data-dependent branches whose two sides have the same instruction count, so the
 *   count per iteration is exact whichever way they go.
 * The lines around the loops are fixed text ("mips: start", "mips: tight loop done",
 * "mips: kernel loop done"), so a benchmark can time each loop from the serial output and
 * subtract an iters=0 run exactly. The checksums, which depend on every iteration (the work
 * cannot be skipped, and two VMMs can be checked to compute the same), come last as
 * fixed-width hex: "mips: checksums tight 0x... kernel 0x...".
 * bench/tcg_vm.py holds the instruction counts and a Python model of both checksums.
 */
        .include "common.inc"

        .set DEFAULT_ITERS, 1000000
        .set TABLE_ENTRIES, 256                         /* a power of two: indexed with a mask */
        .set TABLE_SEED, 0x27d4eb2f                     /* entry i starts as i * TABLE_SEED */
        .set MIX_MULTIPLIER, 0x5bd1e995
        .set KERNEL_CHECKSUM_SEED, 0x165667b1

main32:
        mov $iters_key, %edi
        mov $DEFAULT_ITERS, %eax
        call cmdline_uint32
        mov %eax, iterations
        ENTER_LONG_MODE main64

        .code64
main64:
        LONG_MODE_PROLOGUE
        call idt_init64
        call table_init64
        mov iterations(%rip), %ebx                      /* zero-extends: 0..2^32-1 iterations */

        PRINT 64, "mips: start\n"
        xor %eax, %eax
        xor %edx, %edx
        xor %ecx, %ecx
        test %rbx, %rbx
        jz 2f
        .balign 16
1:      add %rcx, %rax
        xor %rax, %rdx
        inc %rcx
        cmp %rbx, %rcx
        jne 1b
2:      mov %rdx, tight_checksum(%rip)
        PRINT 64, "mips: tight loop done\n"

        lea table(%rip), %rdi
        mov $KERNEL_CHECKSUM_SEED, %r8d
        mov $1, %r9d
        shl $63, %r9                                    /* threshold: about half fall below */
        xor %r10d, %r10d
        xor %ecx, %ecx
        test %rbx, %rbx
        jz 7f
        .balign 16
1:      mov %ecx, %eax
        and $(TABLE_ENTRIES - 1), %eax
        mov (%rdi,%rax,8), %rdx
        add %r8, %rdx
        call mix64                                      /* 6 instructions with its ret */
        mov %rdx, (%rdi,%rax,8)
        test $1, %dl
        jz 3f
        add %rdx, %r8
        jmp 4f
3:      sub %rdx, %r8
        not %r8
4:      cmp %r9, %rdx
        jb 5f
        inc %r10
        jmp 6f
5:      dec %r10
        add %rdx, %r10
6:      inc %rcx
        cmp %rbx, %rcx
        jne 1b
7:      xor %r10, %r8
        mov %r8, kernel_checksum(%rip)
        PRINT 64, "mips: kernel loop done\n"

        PRINT 64, "mips: checksums tight "
        mov tight_checksum(%rip), %rax
        call puthex_fixed64
        PRINT 64, " kernel "
        mov kernel_checksum(%rip), %rax
        call puthex_fixed64
        PRINT 64, "\n"
        EXIT EXIT_OK

/* mix64: RDX = rol(RDX * MIX_MULTIPLIER, 13) ^ RCX; keeps every other register. */
mix64:
        push %rcx
        imul $MIX_MULTIPLIER, %rdx, %rdx
        rol $13, %rdx
        xor %rcx, %rdx
        pop %rcx
        ret

/* table_init64: entry i = i * TABLE_SEED, so the table does not rely on zeroed .bss. */
table_init64:
        push %rax
        push %rcx
        push %rdi
        lea table(%rip), %rdi
        xor %ecx, %ecx
1:      imul $TABLE_SEED, %rcx, %rax
        mov %rax, (%rdi,%rcx,8)
        inc %ecx
        cmp $TABLE_ENTRIES, %ecx
        jb 1b
        pop %rdi
        pop %rcx
        pop %rax
        ret

/*
 * puthex_fixed64: writes RAX as 0x and 16 hex digits. A digit table instead of a compare
 * keeps the instruction count independent of the value.
 */
puthex_fixed64:
        push %rax
        push %rcx
        push %rdx
        push %rsi
        mov %rax, %rdx
        mov $'0', %al
        call putc64
        mov $'x', %al
        call putc64
        lea hex_digits(%rip), %rsi
        mov $16, %ecx
1:      rol $4, %rdx
        mov %edx, %eax
        and $0xf, %eax
        movzbl (%rsi,%rax), %eax
        call putc64
        dec %ecx
        jnz 1b
        pop %rsi
        pop %rdx
        pop %rcx
        pop %rax
        ret
        .code32

        .section .rodata
iters_key:
        .asciz "iters="
hex_digits:
        .ascii "0123456789abcdef"

        .data
        .balign 8
iterations:
        .quad 0
tight_checksum:
        .quad 0
kernel_checksum:
        .quad 0

        .bss
        .balign 64
table:  .skip TABLE_ENTRIES * 8

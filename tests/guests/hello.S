/*
 * hello: prints a greeting and the multiboot command line (QEMU passes "KERNEL APPEND"),
 * then exits with the debug-exit value given as `exit=N` on the command line (default EXIT_OK).
 */
        .include "common.inc"

main32:
        PRINT 32, "hello from the pyhv test guest\n"
        PRINT 32, "cmdline: "
        call cmdline32
        call puts32
        PRINT 32, "\n"
        mov $exit_key, %edi
        mov $EXIT_OK, %eax
        call cmdline_uint32
        outl %eax, $DEBUG_EXIT_PORT
        EXIT EXIT_FAIL

        .section .rodata
exit_key:
        .asciz "exit="

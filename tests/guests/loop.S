/*
 * loop: a guest that never ends by itself. It prints a banner, then "alive N" lines with a
 * busy delay between them, so a management test can watch its console, pause it and
 * destroy it. Built by tests/guests/build.py next to the shared runtime (common.inc).
 */
        .include "common.inc"

main32:
        PRINT 32, "loop guest running\n"
        xor %ebx, %ebx
1:
        PRINT 32, "alive\n"
        inc %ebx
        mov $20000, %ecx
2:
        dec %ecx
        jnz 2b
        jmp 1b

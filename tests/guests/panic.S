/*
 * panic: prints the lines a Linux kernel prints when it panics, then does what `panic=N` makes
 * the kernel do next: by default it resets through the i8042 at once (panic=-1); with `hang=1`
 * on the command line it prints the end-of-panic line and stops for good, interrupts off
 * (panic=0). pyhv reads those lines on the serial console and ends the VM with status 1 either
 * way (pyhv/panic_watch.py); QEMU, which does not read them, exits 0 on the reset and runs on
 * when the guest stops.
 */
        .include "common.inc"

main32:
        PRINT 32, "[    1.930832] Kernel panic - not syncing: pyhv test guest panic\n"
        PRINT 32, "[    1.930840] CPU: 0 PID: 1 Comm: swapper/0 Not tainted\n"
        mov $hang_key, %edi
        xor %eax, %eax
        call cmdline_uint32
        test %eax, %eax
        jnz stop_for_good
        RESET_THROUGH_I8042

stop_for_good:
        PRINT 32, "[    1.930900] ---[ end Kernel panic - not syncing: pyhv test guest panic ]---\n"
        cli
2:      hlt
        jmp 2b

        .section .rodata
hang_key:
        .asciz "hang="

/*
 * reset: pulses the CPU reset line through the i8042 (command 0xFE to port 0x64), the way
 * PC kernels reboot. Under -no-reboot the VMM then ends with status 0, like QEMU. If the
 * reset is ignored the guest says so after a short spin and fails through debug-exit.
 */
        .include "common.inc"

        .set I8042_COMMAND, 0x64
        .set I8042_PULSE_RESET, 0xfe
        .set IGNORED_RESET_SPINS, 1000000

main32:
        PRINT 32, "resetting through the i8042\n"
        mov $I8042_PULSE_RESET, %al
        out %al, $I8042_COMMAND
        mov $IGNORED_RESET_SPINS, %ecx
1:      pause
        dec %ecx
        jnz 1b
        PRINT 32, "reset ignored\n"
        EXIT EXIT_FAIL

/*
 * reset: pulses the CPU reset line through the i8042 (command 0xFE to port 0x64), the way
 * PC kernels reboot. Under -no-reboot the VMM then ends with status 0, like QEMU. If the
 * reset is ignored the guest says so after a short spin and fails through debug-exit.
 */
        .include "common.inc"

main32:
        PRINT 32, "resetting through the i8042\n"
        RESET_THROUGH_I8042

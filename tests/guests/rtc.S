/*
 * rtc: reads the MC146818 CMOS clock the way a kernel does (wait for no update in
 * progress, honour register B's BCD/binary and 12/24-hour bits) and checks each field is
 * a well-formed value in range. It prints the format and the verdicts, never the time, so
 * the output is the same on every run; then it waits for the seconds to move, giving up
 * after several seconds of TSC time (a poll count would depend on the cost of an exit).
 */
        .include "common.inc"

        .set CMOS_INDEX, 0x70
        .set CMOS_DATA, 0x71
        .set RTC_SECONDS, 0x00
        .set RTC_MINUTES, 0x02
        .set RTC_HOURS, 0x04
        .set RTC_DAY_OF_MONTH, 0x07
        .set RTC_MONTH, 0x08
        .set RTC_YEAR, 0x09
        .set RTC_REG_A, 0x0a
        .set RTC_REG_B, 0x0b
        .set RTC_A_UPDATE_IN_PROGRESS, 0x80
        .set RTC_B_24_HOUR, 0x02
        .set RTC_B_BINARY, 0x04
        .set RTC_HOUR_PM, 0x80
        /* Give up on the seconds moving after this many 2^32-cycle TSC periods (seconds). */
        .set SECOND_CHANGE_TSC_PERIODS, 3
        .set UPDATE_POLLS, 1000000

/* CHECK_FIELD register, low, high, "name": reads a field, fails unless low <= value <= high. */
        .macro CHECK_FIELD register, low, high, name
        mov $\register, %al
        call rtc_read_value32
        PRINT 32, "rtc: \name "
        cmp $\low, %eax
        jb field_out_of_range
        cmp $\high, %eax
        ja field_out_of_range
        PRINT 32, "valid\n"
        .endm

main32:
        mov $RTC_REG_B, %al
        call cmos_read32
        mov %eax, register_b
        PRINT 32, "rtc: format "
        testb $RTC_B_BINARY, register_b
        jnz 1f
        PRINT 32, "bcd"
        jmp 2f
1:      PRINT 32, "binary"
2:      testb $RTC_B_24_HOUR, register_b
        jz 3f
        PRINT 32, " 24-hour\n"
        jmp 4f
3:      PRINT 32, " 12-hour\n"
4:      call wait_no_update32
        CHECK_FIELD RTC_SECONDS, 0, 59, seconds
        CHECK_FIELD RTC_MINUTES, 0, 59, minutes
        mov $RTC_HOURS, %al
        call cmos_read32
        testb $RTC_B_24_HOUR, register_b
        jnz 5f
        and $~RTC_HOUR_PM, %al                          /* 12-hour clock: 1..12 plus a PM bit */
        call decode_value32
        PRINT 32, "rtc: hours "
        cmp $1, %eax
        jb field_out_of_range
        cmp $12, %eax
        ja field_out_of_range
        PRINT 32, "valid\n"
        jmp 6f
5:      CHECK_FIELD RTC_HOURS, 0, 23, hours
6:      CHECK_FIELD RTC_DAY_OF_MONTH, 1, 31, day
        CHECK_FIELD RTC_MONTH, 1, 12, month
        CHECK_FIELD RTC_YEAR, 0, 99, year

        mov $RTC_SECONDS, %al
        call cmos_read32
        mov %eax, %ebx
        rdtsc
        mov %edx, %esi
7:      mov $RTC_SECONDS, %al
        call cmos_read32
        cmp %ebx, %eax
        jne 8f
        rdtsc
        sub %esi, %edx
        cmp $SECOND_CHANGE_TSC_PERIODS, %edx
        jb 7b
        PRINT 32, "rtc: seconds never changed\n"
        EXIT EXIT_FAIL
8:      PRINT 32, "rtc: seconds advance\n"
        EXIT EXIT_OK

field_out_of_range:
        PRINT 32, "out of range: "
        call puthex32
        PRINT 32, "\n"
        EXIT EXIT_FAIL

/* cmos_read32: AL = register; returns EAX = its raw byte. */
cmos_read32:
        out %al, $CMOS_INDEX
        xor %eax, %eax
        in $CMOS_DATA, %al
        ret

/* wait_no_update32: returns once register A shows no update in progress (bounded). */
wait_no_update32:
        push %eax
        push %ecx
        mov $UPDATE_POLLS, %ecx
1:      mov $RTC_REG_A, %al
        call cmos_read32
        test $RTC_A_UPDATE_IN_PROGRESS, %al
        jz 2f
        dec %ecx
        jnz 1b
2:      pop %ecx
        pop %eax
        ret

/* rtc_read_value32: AL = register; returns EAX = its value, decoded from BCD if need be. */
rtc_read_value32:
        call cmos_read32
        /* fall through */

/* decode_value32: EAX = raw field; returns the number, or 0xff.. for malformed BCD. */
decode_value32:
        testb $RTC_B_BINARY, register_b
        jnz 2f
        mov %eax, %ecx
        and $0x0f, %ecx
        cmp $9, %ecx
        ja 1f
        mov %eax, %ecx
        shr $4, %ecx
        cmp $9, %ecx
        ja 1f
        imul $10, %ecx
        and $0x0f, %eax
        add %ecx, %eax
        ret
1:      or $0xffffff00, %eax                            /* out of every range, keeps the raw byte */
2:      ret

        .data
register_b:
        .long 0

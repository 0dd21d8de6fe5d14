/*
 * virtio_blk: a polling virtio-blk driver on the virtio-mmio transport (version 2), written
 * the way the virtio 1.2 spec tells a driver to bring a device up (3.1.1, 4.2.3):
 *
 *   probe (magic, version 2, device ID 2), reset, ACKNOWLEDGE|DRIVER, feature negotiation
 *   (VIRTIO_F_VERSION_1 only), FEATURES_OK read back, queue 0 set up, DRIVER_OK, capacity
 *   read from config space under the config-generation check,
 *
 * then sends requests as header / data / status descriptor chains (FLUSH: header / status)
 * and polls the used ring, asking for no interrupts. Every request's used entry must name
 * the chain's head. Each line printed is one fact a test can compare; a sector's data is
 * summarised by its CRC-32 (zlib's). With `irq=PIN` the guest also enables the IOAPIC pin
 * the device interrupts on and waits for one used-buffer interrupt, in long mode (nested
 * KVM here delivers interrupts only there).
 *
 * Command line (decimal): read=SECTOR (default 1), write=SECTOR (default 2),
 * base=ADDRESS of the MMIO window (default 0xD0000000, pyhv's first slot), irq=PIN on the
 * IOAPIC at 0xFEC00000 (default 0: no interrupt test).
 */
        .include "common.inc"

        /* virtio-mmio registers (virtio 1.2, 4.2.2) */
        .set VIRTIO_MAGIC, 0x000
        .set VIRTIO_VERSION, 0x004
        .set VIRTIO_DEVICE_ID, 0x008
        .set VIRTIO_DEVICE_FEATURES, 0x010
        .set VIRTIO_DEVICE_FEATURES_SEL, 0x014
        .set VIRTIO_DRIVER_FEATURES, 0x020
        .set VIRTIO_DRIVER_FEATURES_SEL, 0x024
        .set VIRTIO_QUEUE_SEL, 0x030
        .set VIRTIO_QUEUE_NUM_MAX, 0x034
        .set VIRTIO_QUEUE_NUM, 0x038
        .set VIRTIO_QUEUE_READY, 0x044
        .set VIRTIO_QUEUE_NOTIFY, 0x050
        .set VIRTIO_INTERRUPT_STATUS, 0x060
        .set VIRTIO_INTERRUPT_ACK, 0x064
        .set VIRTIO_STATUS, 0x070
        .set VIRTIO_QUEUE_DESC_LOW, 0x080
        .set VIRTIO_QUEUE_DESC_HIGH, 0x084
        .set VIRTIO_QUEUE_DRIVER_LOW, 0x090
        .set VIRTIO_QUEUE_DRIVER_HIGH, 0x094
        .set VIRTIO_QUEUE_DEVICE_LOW, 0x0a0
        .set VIRTIO_QUEUE_DEVICE_HIGH, 0x0a4
        .set VIRTIO_CONFIG_GENERATION, 0x0fc
        .set VIRTIO_CONFIG, 0x100
        .set BLK_CONFIG_CAPACITY, 0                     /* le64, in 512-byte sectors */

        .set VIRTIO_MAGIC_VALUE, 0x74726976             /* "virt" */
        .set VIRTIO_MMIO_VERSION, 2
        .set VIRTIO_ID_BLOCK, 2
        .set DEFAULT_VIRTIO_BASE, 0xD0000000

        .set STATUS_ACKNOWLEDGE, 0x01
        .set STATUS_DRIVER, 0x02
        .set STATUS_DRIVER_OK, 0x04
        .set STATUS_FEATURES_OK, 0x08
        .set STATUS_FAILED, 0x80
        .set F_VERSION_1_IN_HIGH_WORD, 1 << (32 - 32)   /* feature bit 32 */
        .set BLK_F_RO, 1 << 5
        .set BLK_F_FLUSH, 1 << 9

        /* split virtqueue (2.7) */
        .set QUEUE_SIZE, 16
        .set DESC_SIZE, 16
        .set DESC_ADDR, 0
        .set DESC_LEN, 8
        .set DESC_FLAGS, 12
        .set DESC_NEXT, 14
        .set DESC_F_NEXT, 1
        .set DESC_F_WRITE, 2
        .set AVAIL_FLAGS, 0
        .set AVAIL_IDX, 2
        .set AVAIL_RING, 4
        .set AVAIL_F_NO_INTERRUPT, 1
        .set USED_IDX, 2
        .set USED_RING, 4                               /* {le32 id, le32 len} per entry */
        /* Requests use chains at heads 0, 3, 6, 9, 12 in turn, so heads and ring slots vary. */
        .set CHAIN_SLOTS, QUEUE_SIZE / 3

        /* virtio-blk requests (5.2.6) */
        .set BLK_T_IN, 0
        .set BLK_T_OUT, 1
        .set BLK_T_FLUSH, 4
        .set BLK_T_GET_ID, 8
        .set BLK_HEADER_SIZE, 16                        /* le32 type, le32 ioprio, le64 sector */
        .set BLK_ID_BYTES, 20
        .set SECTOR_SIZE, 512
        .set BULK_SECTORS, 8                            /* whole-disk read: 4 KiB per request */
        .set WRITE_PATTERN_TAG, 0x5A000000              /* dword j of sector s: tag | s << 8 | j */

        /* Bounded waits, so a device that never answers fails the run instead of hanging it. */
        .set POLL_LIMIT, 100000000
        /* The interrupt wait's watchdog: a local APIC timer one-shot, about 0.1 s at 1 GHz. */
        .set WATCHDOG_COUNT, 100000000

        /* interrupt path: IOAPIC pin -> local APIC -> IDT vector */
        .set IRQ_VECTOR, 0x40
        .set WATCHDOG_VECTOR, 0x41
        .set IOAPIC_BASE, 0xFEC00000
        .set IOAPIC_REGSEL, 0x00
        .set IOAPIC_WINDOW, 0x10
        .set IOAPIC_REDIRECTION, 0x10                   /* pin p: registers 0x10 + 2p (low), +1 (high) */
        .set IOAPIC_LEVEL_TRIGGERED, 1 << 15
        .set IOAPIC_MASKED, 1 << 16
        .set LAPIC_BASE, 0xFEE00000
        .set LAPIC_EOI, 0xB0
        .set LAPIC_SVR, 0xF0
        .set LAPIC_SVR_ENABLE, 1 << 8
        .set LAPIC_SPURIOUS_VECTOR, 0xFF
        .set LAPIC_LVT_TIMER, 0x320
        .set LAPIC_TIMER_INITIAL, 0x380
        .set LAPIC_TIMER_DIVIDE, 0x3E0
        .set LAPIC_TIMER_DIVIDE_BY_1, 0xB
        .set LAPIC_LVT_MASKED, 1 << 16
        .set MSR_APIC_BASE, 0x1B
        .set APIC_BASE_GLOBAL_ENABLE, 1 << 11
        .set PIC1_DATA, 0x21
        .set PIC2_DATA, 0xA1

        /* MMIO (the virtio window, IOAPIC, LAPIC) lies in the 4th GiB: mapped uncached. */
        .set MMIO_GIB_BASE, 0xC0000000
        .set PTE_WRITE_THROUGH, 1 << 3
        .set PTE_CACHE_DISABLE, 1 << 4

main32:
        mov $read_key, %edi
        mov $1, %eax
        call cmdline_uint32
        mov %eax, read_sector
        mov $write_key, %edi
        mov $2, %eax
        call cmdline_uint32
        mov %eax, write_sector
        mov $base_key, %edi
        mov $DEFAULT_VIRTIO_BASE, %eax
        call cmdline_uint32
        mov %eax, virtio_base
        mov $irq_key, %edi
        xor %eax, %eax
        call cmdline_uint32
        mov %eax, irq_pin

        xor %ecx, %ecx
1:      mov %ecx, %eax
        shl $21, %eax
        add $MMIO_GIB_BASE, %eax
        or $(PTE_PRESENT + PTE_WRITABLE + PTE_HUGE + PTE_WRITE_THROUGH + PTE_CACHE_DISABLE), %eax
        mov %eax, pd_mmio(, %ecx, 8)
        inc %ecx
        cmp $512, %ecx
        jb 1b
        call long_mode_paging32
        movl $(pd_mmio + PTE_PRESENT + PTE_WRITABLE), pdpt + 3 * 8
        mov %cr3, %eax                                  /* flush the TLB for the new entry */
        mov %eax, %cr3
        ljmp $SEL_CODE64, $main64

        .code64
main64:
        LONG_MODE_PROLOGUE
        call idt_init64
        mov virtio_base(%rip), %ebx                     /* RBX: the MMIO window, throughout */
        call virtio_probe64
        call virtio_init64
        call read_capacity64

        xor %edx, %edx
        call report_read64
        mov read_sector(%rip), %edx
        call report_read64
        call write_pattern64
        mov write_sector(%rip), %edx
        call report_read64
        call flush64
        call get_id64
        mov capacity(%rip), %rdx                        /* first sector past the end */
        call report_read64
        call read_whole_disk64

        PRINT 64, "interrupt status after polling: "
        mov VIRTIO_INTERRUPT_STATUS(%rbx), %eax
        call puthex64
        PRINT 64, "\n"
        cmpl $0, irq_pin(%rip)
        je 1f
        call interrupt_test64
1:      PRINT 64, "virtio-blk: done\n"
        EXIT EXIT_OK

/* ---- device bring-up ------------------------------------------------------------------- */

virtio_probe64:
        mov VIRTIO_MAGIC(%rbx), %eax
        cmp $VIRTIO_MAGIC_VALUE, %eax
        je 1f
        PRINT 64, "no virtio-mmio device at "
        push %rax
        mov %rbx, %rax
        call puthex64
        pop %rax
        PRINT 64, ": magic "
        jmp fail_with_rax64
1:      PRINT 64, "virtio-mmio: version "
        mov VIRTIO_VERSION(%rbx), %eax
        call putdec64
        cmp $VIRTIO_MMIO_VERSION, %eax
        je 2f
        PRINT 64, " (legacy transport, not supported)\n"
        EXIT EXIT_FAIL
2:      PRINT 64, ", device id "
        mov VIRTIO_DEVICE_ID(%rbx), %eax
        call putdec64
        PRINT 64, "\n"
        cmp $VIRTIO_ID_BLOCK, %eax
        je 3f
        PRINT 64, "not a block device\n"
        EXIT EXIT_FAIL
3:      ret

virtio_init64:
        movl $0, VIRTIO_STATUS(%rbx)                    /* reset */
        PRINT 64, "status after reset: "
        mov VIRTIO_STATUS(%rbx), %eax
        call puthex64
        PRINT 64, "\n"
        movl $STATUS_ACKNOWLEDGE, VIRTIO_STATUS(%rbx)
        movl $(STATUS_ACKNOWLEDGE + STATUS_DRIVER), VIRTIO_STATUS(%rbx)

        movl $1, VIRTIO_DEVICE_FEATURES_SEL(%rbx)
        mov VIRTIO_DEVICE_FEATURES(%rbx), %ecx
        movl $0, VIRTIO_DEVICE_FEATURES_SEL(%rbx)
        mov VIRTIO_DEVICE_FEATURES(%rbx), %edx
        PRINT 64, "device features: version_1 "
        mov %ecx, %eax
        and $F_VERSION_1_IN_HIGH_WORD, %eax
        call putbool64
        PRINT 64, ", ro "
        mov %edx, %eax
        and $BLK_F_RO, %eax
        call putbool64
        PRINT 64, ", flush "
        mov %edx, %eax
        and $BLK_F_FLUSH, %eax
        call putbool64
        PRINT 64, "\n"
        test $F_VERSION_1_IN_HIGH_WORD, %ecx
        jnz 1f
        movl $STATUS_FAILED, VIRTIO_STATUS(%rbx)
        PRINT 64, "legacy-only device, not supported\n"
        EXIT EXIT_FAIL

1:      movl $1, VIRTIO_DRIVER_FEATURES_SEL(%rbx)
        movl $F_VERSION_1_IN_HIGH_WORD, VIRTIO_DRIVER_FEATURES(%rbx)
        movl $0, VIRTIO_DRIVER_FEATURES_SEL(%rbx)
        movl $0, VIRTIO_DRIVER_FEATURES(%rbx)
        movl $(STATUS_ACKNOWLEDGE + STATUS_DRIVER + STATUS_FEATURES_OK), VIRTIO_STATUS(%rbx)
        PRINT 64, "status after FEATURES_OK: "
        mov VIRTIO_STATUS(%rbx), %eax
        call puthex64
        PRINT 64, "\n"
        test $STATUS_FEATURES_OK, %eax
        jnz 2f
        movl $STATUS_FAILED, VIRTIO_STATUS(%rbx)
        PRINT 64, "device refused the features\n"
        EXIT EXIT_FAIL

2:      movl $0, VIRTIO_QUEUE_SEL(%rbx)
        mov VIRTIO_QUEUE_READY(%rbx), %eax
        test %eax, %eax
        jz 3f
        PRINT 64, "queue 0 already ready after reset\n"
        EXIT EXIT_FAIL
3:      mov VIRTIO_QUEUE_NUM_MAX(%rbx), %eax
        cmp $QUEUE_SIZE, %eax
        jae 4f
        PRINT 64, "queue 0 too small: max "
        jmp fail_with_rax64
4:      PRINT 64, "queue 0: max "
        call putdec64
        movl $QUEUE_SIZE, VIRTIO_QUEUE_NUM(%rbx)
        mov $virtq_desc, %eax
        mov %eax, VIRTIO_QUEUE_DESC_LOW(%rbx)
        movl $0, VIRTIO_QUEUE_DESC_HIGH(%rbx)
        mov $virtq_avail, %eax
        mov %eax, VIRTIO_QUEUE_DRIVER_LOW(%rbx)
        movl $0, VIRTIO_QUEUE_DRIVER_HIGH(%rbx)
        mov $virtq_used, %eax
        mov %eax, VIRTIO_QUEUE_DEVICE_LOW(%rbx)
        movl $0, VIRTIO_QUEUE_DEVICE_HIGH(%rbx)
        movw $AVAIL_F_NO_INTERRUPT, virtq_avail + AVAIL_FLAGS(%rip)
        movl $1, VIRTIO_QUEUE_READY(%rbx)
        PRINT 64, ", size "
        mov $QUEUE_SIZE, %eax
        call putdec64
        PRINT 64, ", ready "
        mov VIRTIO_QUEUE_READY(%rbx), %eax
        call putdec64
        PRINT 64, "\n"

        movl $(STATUS_ACKNOWLEDGE + STATUS_DRIVER + STATUS_FEATURES_OK + STATUS_DRIVER_OK), VIRTIO_STATUS(%rbx)
        PRINT 64, "status after DRIVER_OK: "
        mov VIRTIO_STATUS(%rbx), %eax
        call puthex64
        PRINT 64, "\n"
        ret

/* read_capacity64: the 64-bit capacity, read as two halves until the generation holds still. */
read_capacity64:
        push %rcx
        push %rdx
1:      mov VIRTIO_CONFIG_GENERATION(%rbx), %ecx
        mov VIRTIO_CONFIG + BLK_CONFIG_CAPACITY(%rbx), %eax
        mov VIRTIO_CONFIG + BLK_CONFIG_CAPACITY + 4(%rbx), %edx
        cmp VIRTIO_CONFIG_GENERATION(%rbx), %ecx
        jne 1b
        shl $32, %rdx
        or %rdx, %rax
        mov %rax, capacity(%rip)
        PRINT 64, "capacity: "
        call putdec64
        PRINT 64, " sectors\n"
        pop %rdx
        pop %rcx
        ret

/* ---- requests ------------------------------------------------------------------------- */

/*
 * blk_request64: EAX = request type, RDX = sector, RSI = data buffer (0: none),
 * ECX = data length, EDI = the data descriptor's flags (DESC_F_WRITE when the device
 * writes it). Returns EAX = the status byte, ECX = the used length.
 */
blk_request64:
        push %rdx
        push %rsi
        push %r8
        push %r9
        push %r10
        mov $blk_header, %r8d
        mov %eax, 0(%r8)
        movl $0, 4(%r8)
        mov %rdx, 8(%r8)
        movb $0xFF, blk_status(%rip)                    /* a status the device never writes */

        mov next_chain_slot(%rip), %eax
        lea (%rax, %rax, 2), %r9d                       /* R9: the head descriptor */
        inc %eax
        cmp $CHAIN_SLOTS, %eax
        jb 1f
        xor %eax, %eax
1:      mov %eax, next_chain_slot(%rip)

        mov %r9d, %r10d
        shl $4, %r10d
        add $virtq_desc, %r10d                          /* R10: the descriptor being filled */
        mov %r8, DESC_ADDR(%r10)
        movl $BLK_HEADER_SIZE, DESC_LEN(%r10)
        movw $DESC_F_NEXT, DESC_FLAGS(%r10)
        lea 1(%r9), %eax
        mov %ax, DESC_NEXT(%r10)
        add $DESC_SIZE, %r10
        test %rsi, %rsi
        jz 2f
        mov %rsi, DESC_ADDR(%r10)
        mov %ecx, DESC_LEN(%r10)
        mov %edi, %eax
        or $DESC_F_NEXT, %eax
        mov %ax, DESC_FLAGS(%r10)
        lea 2(%r9), %eax
        mov %ax, DESC_NEXT(%r10)
        add $DESC_SIZE, %r10
2:      mov $blk_status, %eax
        mov %rax, DESC_ADDR(%r10)
        movl $1, DESC_LEN(%r10)
        movw $DESC_F_WRITE, DESC_FLAGS(%r10)
        movw $0, DESC_NEXT(%r10)

        /* Publish: the ring entry, then the index (x86 keeps stores in order), then notify. */
        mov $virtq_avail, %r8d
        movzwl AVAIL_IDX(%r8), %eax
        mov %eax, %edx
        and $(QUEUE_SIZE - 1), %edx
        mov %r9w, AVAIL_RING(%r8, %rdx, 2)
        inc %eax
        mov %ax, AVAIL_IDX(%r8)
        mov irq_count(%rip), %eax
        movl $0, VIRTIO_QUEUE_NOTIFY(%rbx)
        cmpb $0, wait_for_irq(%rip)
        je 4f

        call wait_for_interrupt64

4:      mov $virtq_used, %r8d
        mov $POLL_LIMIT, %ecx
5:      movzwl USED_IDX(%r8), %eax
        cmp last_used_idx(%rip), %ax
        jne 6f
        pause
        dec %ecx
        jnz 5b
        PRINT 64, "request timed out: used ring index stays at "
        jmp fail_with_rax64

6:      movzwl last_used_idx(%rip), %edx
        incw last_used_idx(%rip)
        and $(QUEUE_SIZE - 1), %edx
        mov USED_RING(%r8, %rdx, 8), %eax
        mov USED_RING + 4(%r8, %rdx, 8), %ecx
        cmp %r9d, %eax
        je 7f
        PRINT 64, "used ring names descriptor "
        call putdec64
        PRINT 64, ", not the chain head "
        mov %r9, %rax
        jmp fail_with_rax64
7:      movzbl blk_status(%rip), %eax
        pop %r10
        pop %r9
        pop %r8
        pop %rsi
        pop %rdx
        ret

/* read_sector64: RDX = sector, into sector_buffer. Returns what blk_request64 returns. */
read_sector64:
        push %rsi
        push %rdi
        mov $BLK_T_IN, %eax
        mov $sector_buffer, %esi
        mov $SECTOR_SIZE, %ecx
        mov $DESC_F_WRITE, %edi
        call blk_request64
        pop %rdi
        pop %rsi
        ret

/* report_read64: RDX = sector; prints its status, and its used length and CRC-32 if OK. */
report_read64:
        push %rax
        push %rcx
        push %rsi
        call read_sector64
        PRINT 64, "read sector "
        xchg %rax, %rdx
        call putdec64
        xchg %rax, %rdx
        call put_status_and_used64
        test %eax, %eax
        jnz 1f
        PRINT 64, " crc32 "
        mov $sector_buffer, %esi
        mov $SECTOR_SIZE, %ecx
        call crc32_64
        call puthex64
1:      PRINT 64, "\n"
        pop %rsi
        pop %rcx
        pop %rax
        ret

/* put_status_and_used64: EAX = status, ECX = used length; the length only for status OK. */
put_status_and_used64:
        PRINT 64, ": status "
        call putdec64
        test %eax, %eax
        jnz 1f
        PRINT 64, " used "
        push %rax
        mov %ecx, %eax
        call putdec64
        pop %rax
1:      ret

/* write_pattern64: fills a sector with dwords tag | sector << 8 | index and writes it. */
write_pattern64:
        push %rax
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        mov write_sector(%rip), %edx
        mov $write_buffer, %esi
        xor %ecx, %ecx
1:      mov %edx, %eax
        shl $8, %eax
        or %ecx, %eax
        or $WRITE_PATTERN_TAG, %eax
        mov %eax, (%rsi, %rcx, 4)
        inc %ecx
        cmp $(SECTOR_SIZE / 4), %ecx
        jb 1b
        mov $BLK_T_OUT, %eax
        mov $SECTOR_SIZE, %ecx
        xor %edi, %edi
        call blk_request64
        PRINT 64, "write sector "
        xchg %rax, %rdx
        call putdec64
        xchg %rax, %rdx
        call put_status_and_used64
        PRINT 64, "\n"
        pop %rdi
        pop %rsi
        pop %rdx
        pop %rcx
        pop %rax
        ret

flush64:
        push %rax
        push %rcx
        push %rdx
        push %rsi
        mov $BLK_T_FLUSH, %eax
        xor %edx, %edx
        xor %esi, %esi                                  /* header and status only */
        call blk_request64
        PRINT 64, "flush"
        call put_status_and_used64
        PRINT 64, "\n"
        pop %rsi
        pop %rdx
        pop %rcx
        pop %rax
        ret

/* get_id64: prints the serial, up to its NUL or all 20 bytes (the spec's no-NUL case). */
get_id64:
        push %rax
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        mov $id_buffer, %edi
        mov $0xFF, %al                                  /* bytes the device did not write show */
        mov $BLK_ID_BYTES, %ecx
        rep stosb
        mov $BLK_T_GET_ID, %eax
        xor %edx, %edx
        mov $id_buffer, %esi
        mov $BLK_ID_BYTES, %ecx
        mov $DESC_F_WRITE, %edi
        call blk_request64
        PRINT 64, "get id"
        call put_status_and_used64
        PRINT 64, " serial \""
        mov $BLK_ID_BYTES, %ecx
1:      lodsb
        test %al, %al
        jz 2f
        call putc64
        dec %ecx
        jnz 1b
2:      PRINT 64, "\"\n"
        pop %rdi
        pop %rsi
        pop %rdx
        pop %rcx
        pop %rax
        ret

/* read_whole_disk64: every sector, BULK_SECTORS per request: one CRC-32, all statuses ORed. */
read_whole_disk64:
        push %rax
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        push %r8
        push %r9
        xor %edx, %edx                                  /* RDX: next sector */
        xor %r8d, %r8d                                  /* R8: statuses ORed */
        mov $0xFFFFFFFF, %r9d                           /* R9: running CRC-32 */
1:      mov capacity(%rip), %rcx
        sub %rdx, %rcx
        jbe 3f
        cmp $BULK_SECTORS, %rcx
        jbe 2f
        mov $BULK_SECTORS, %ecx
2:      shl $9, %ecx                                    /* sectors -> bytes */
        push %rcx
        mov $BLK_T_IN, %eax
        mov $bulk_buffer, %esi
        mov $DESC_F_WRITE, %edi
        call blk_request64
        pop %rcx
        or %eax, %r8d
        mov %r9d, %eax
        call crc32_update64
        mov %eax, %r9d
        shr $9, %ecx
        add %rcx, %rdx
        jmp 1b
3:      PRINT 64, "read "
        mov %rdx, %rax
        call putdec64
        PRINT 64, " sectors, 8 per request: status "
        mov %r8d, %eax
        call putdec64
        PRINT 64, " crc32 "
        mov %r9d, %eax
        not %eax
        call puthex64
        PRINT 64, "\n"
        pop %r9
        pop %r8
        pop %rdi
        pop %rsi
        pop %rdx
        pop %rcx
        pop %rax
        ret

/* ---- the used-buffer interrupt ----------------------------------------------------------- */

interrupt_test64:
        push %rax
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        mov $0xFF, %al                                  /* no 8259 interrupts */
        out %al, $PIC1_DATA
        out %al, $PIC2_DATA
        mov $MSR_APIC_BASE, %ecx
        rdmsr
        or $APIC_BASE_GLOBAL_ENABLE, %eax
        wrmsr
        mov $LAPIC_BASE, %edi
        movl $(LAPIC_SVR_ENABLE + LAPIC_SPURIOUS_VECTOR), LAPIC_SVR(%rdi)
        mov $IRQ_VECTOR, %edi
        mov $virtio_interrupt64, %esi
        call idt_set_gate64
        mov $WATCHDOG_VECTOR, %edi
        mov $watchdog64, %esi
        call idt_set_gate64

        mov irq_pin(%rip), %ecx
        lea IOAPIC_REDIRECTION + 1(, %rcx, 2), %eax     /* destination: APIC ID 0 */
        xor %edx, %edx
        call ioapic_write64
        lea IOAPIC_REDIRECTION(, %rcx, 2), %eax
        mov $(IRQ_VECTOR + IOAPIC_LEVEL_TRIGGERED), %edx
        call ioapic_write64
        PRINT 64, "ioapic: pin "
        mov %ecx, %eax
        call putdec64
        PRINT 64, " -> vector "
        mov $IRQ_VECTOR, %eax
        call puthex64
        PRINT 64, ", level-triggered, active high\n"

        mov VIRTIO_INTERRUPT_STATUS(%rbx), %eax         /* nothing may be left over */
        mov %eax, VIRTIO_INTERRUPT_ACK(%rbx)
        movw $0, virtq_avail + AVAIL_FLAGS(%rip)        /* interrupts wanted from now on */
        movb $1, wait_for_irq(%rip)
        sti
        mov read_sector(%rip), %edx
        call report_read64
        cli
        movb $0, wait_for_irq(%rip)
        PRINT 64, "used-buffer interrupts: "
        mov irq_count(%rip), %eax
        call putdec64
        PRINT 64, ", interrupt status seen "
        mov irq_status_seen(%rip), %eax
        call puthex64
        PRINT 64, ", after ack "
        mov VIRTIO_INTERRUPT_STATUS(%rbx), %eax
        call puthex64
        PRINT 64, "\n"

        lea IOAPIC_REDIRECTION(, %rcx, 2), %eax
        mov $(IRQ_VECTOR + IOAPIC_LEVEL_TRIGGERED + IOAPIC_MASKED), %edx
        call ioapic_write64
        pop %rdi
        pop %rsi
        pop %rdx
        pop %rcx
        pop %rax
        ret

/* ioapic_write64: EAX = register index, EDX = value. */
ioapic_write64:
        push %rdi
        mov $IOAPIC_BASE, %edi
        mov %eax, IOAPIC_REGSEL(%rdi)
        mov %edx, IOAPIC_WINDOW(%rdi)
        pop %rdi
        ret

/*
 * wait_for_interrupt64: EAX = irq_count before the kick; returns once it has moved, with
 * interrupts off. `sti; hlt` is atomic (the STI shadow), so no interrupt is slept through.
 */
wait_for_interrupt64:
        push %rdi
        mov $LAPIC_BASE, %edi
        movl $LAPIC_TIMER_DIVIDE_BY_1, LAPIC_TIMER_DIVIDE(%rdi)
        movl $WATCHDOG_VECTOR, LAPIC_LVT_TIMER(%rdi)
        movl $WATCHDOG_COUNT, LAPIC_TIMER_INITIAL(%rdi)
1:      cli
        cmp irq_count(%rip), %eax
        jne 2f
        cmpb $0, watchdog_fired(%rip)
        jne 3f
        sti
        hlt
        jmp 1b
2:      movl $0, LAPIC_TIMER_INITIAL(%rdi)
        movl $(WATCHDOG_VECTOR + LAPIC_LVT_MASKED), LAPIC_LVT_TIMER(%rdi)
        pop %rdi
        ret
3:      PRINT 64, "no used-buffer interrupt within the watchdog's time\n"
        EXIT EXIT_FAIL

/*
 * The device's interrupt. A zero InterruptStatus is not ours (Linux's vm_interrupt says
 * IRQ_NONE): the nested KVM here delivers the vector a second time once interrupts are
 * enabled again, with InterruptStatus already 0, under QEMU as under pyhv; QEMU's TCG and
 * pyhv's software CPU deliver it once. The device is acknowledged before the EOI, so the
 * level-triggered line is low by then.
 */
virtio_interrupt64:
        push %rax
        push %rdi
        mov virtio_base(%rip), %edi
        mov VIRTIO_INTERRUPT_STATUS(%rdi), %eax
        test %eax, %eax
        jz 1f
        mov %eax, VIRTIO_INTERRUPT_ACK(%rdi)
        or %eax, irq_status_seen(%rip)
        incl irq_count(%rip)
1:      mov $LAPIC_BASE, %edi
        movl $0, LAPIC_EOI(%rdi)
        pop %rdi
        pop %rax
        iretq

watchdog64:
        push %rdi
        movb $1, watchdog_fired(%rip)
        mov $LAPIC_BASE, %edi
        movl $0, LAPIC_EOI(%rdi)
        pop %rdi
        iretq

/* ---- helpers ------------------------------------------------------------------------------ */

/* crc32_64: RSI = buffer, ECX = length; RAX = its CRC-32 (reflected, polynomial 0xEDB88320). */
crc32_64:
        mov $0xFFFFFFFF, %eax
        call crc32_update64
        not %eax
        ret

/* crc32_update64: EAX = running CRC (pre-inverted), RSI = buffer, ECX = length. */
crc32_update64:
        push %rcx
        push %rdx
        push %rsi
        test %ecx, %ecx
        jz 4f
1:      movzbl (%rsi), %edx
        xor %edx, %eax
        mov $8, %edx
2:      shr $1, %eax
        jnc 3f
        xor $0xEDB88320, %eax
3:      dec %edx
        jnz 2b
        inc %rsi
        dec %ecx
        jnz 1b
4:      pop %rsi
        pop %rdx
        pop %rcx
        ret

/* putbool64: "yes" if RAX is non-zero, else "no". */
putbool64:
        test %rax, %rax
        jz 1f
        PRINT 64, "yes"
        ret
1:      PRINT 64, "no"
        ret

/* fail_with_rax64: ends a message with RAX in hex and fails the run. */
fail_with_rax64:
        call puthex64
        PRINT 64, "\n"
        EXIT EXIT_FAIL
        .code32

        .section .rodata
read_key:
        .asciz "read="
write_key:
        .asciz "write="
base_key:
        .asciz "base="
irq_key:
        .asciz "irq="

        .data
        .balign 8
capacity:
        .quad 0
read_sector:
        .long 0
write_sector:
        .long 0
virtio_base:
        .long 0
irq_pin:
        .long 0
next_chain_slot:
        .long 0
irq_count:
        .long 0
irq_status_seen:
        .long 0
last_used_idx:
        .word 0
wait_for_irq:
        .byte 0
watchdog_fired:
        .byte 0

        .bss
        .balign 4096
pd_mmio:
        .skip 4096
virtq_desc:
        .skip QUEUE_SIZE * DESC_SIZE
        .balign 2
virtq_avail:
        .skip AVAIL_RING + 2 * QUEUE_SIZE + 2           /* flags, idx, ring, used_event */
        .balign 4
virtq_used:
        .skip USED_RING + 8 * QUEUE_SIZE + 2            /* flags, idx, ring, avail_event */
        .balign 16
blk_header:
        .skip BLK_HEADER_SIZE
blk_status:
        .skip 1
        .balign 16
id_buffer:
        .skip BLK_ID_BYTES
        .balign 512
sector_buffer:
        .skip SECTOR_SIZE
write_buffer:
        .skip SECTOR_SIZE
        .balign 4096
bulk_buffer:
        .skip BULK_SECTORS * SECTOR_SIZE

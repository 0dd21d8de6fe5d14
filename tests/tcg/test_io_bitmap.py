"""Port I/O at CPL 3 goes through the TSS I/O permission bitmap (SDM vol. 1, 19.5).

Linux grants ports to a process (ioperm, iopl) through that bitmap; the default guest's
pyhv-exit writes the isa-debug-exit port from user mode that way.
"""

from __future__ import annotations

from typing import List, Tuple

import pytest

from pyhv.accel.tcg.segments import cache_from_descriptor

from .harness import GDT, TSS, _descriptor, assemble, long_mode_cpu, needs_as, run_to_hlt

PORT = 0xF4
IOMAP_OFFSET = 0x68  # right after the 64-bit TSS's fixed part
GP_VECTOR = 13
USER_STACK = 0x50000


class Recorder:
    def __init__(self) -> None:
        self.writes: List[Tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def run_user_out(bitmap: bytes, size: int = 1, iomap_offset: int = IOMAP_OFFSET):
    """Drop to CPL 3 with IOPL 0 and execute ``out`` of ``size`` bytes to PORT, then hlt
    (which faults at CPL 3). Returns (recorder, RIP pushed by the #GP, address of the out)."""
    user = assemble(f"""
        mov $0x42, %eax
        mov ${PORT:#x}, %dx
        {'outb %al, %dx' if size == 1 else 'outw %ax, %dx'}
        hlt
    """)
    kernel = assemble(f"""
        push $0x2b
        push ${USER_STACK:#x}
        push $0x2
        push $0x23
        push $0x20000
        iretq
    """)
    memory, cpu = long_mode_cpu(kernel)
    memory.write(0x20000, user)
    limit = IOMAP_OFFSET + len(bitmap) - 1
    memory.write_u64(GDT + 0x30, _descriptor(TSS, limit, 0x89, 0))
    memory.write(TSS + 0x66, iomap_offset.to_bytes(2, "little"))
    memory.write(TSS + IOMAP_OFFSET, bitmap)
    cpu.s.tr = cache_from_descriptor(0x30, memory.read_u64(GDT + 0x30))
    recorder = Recorder()
    cpu.pio_bus.attach(PORT, 2, recorder)
    run_to_hlt(cpu)
    regs = cpu.registers()
    assert regs["r15"] == GP_VECTOR
    pushed_rip = memory.read_u64(regs["rsp"] + 8)
    out_address = 0x20000 + user.index(b"\xee" if size == 1 else b"\x66\xef")
    return recorder, pushed_rip, out_address


def bitmap_granting(*ports: int) -> bytes:
    bits = bytearray(b"\xff" * (0x10000 // 8) + b"\xff")  # Linux keeps a trailing all-ones byte
    for port in ports:
        bits[port >> 3] &= ~(1 << (port & 7)) & 0xFF
    return bytes(bits)


@needs_as
def test_granted_port_is_written_from_user_mode() -> None:
    recorder, pushed_rip, out_address = run_user_out(bitmap_granting(PORT))
    assert recorder.writes == [(0, 1, 0x42)]
    assert pushed_rip > out_address  # the #GP came from the hlt after it


@needs_as
@pytest.mark.parametrize("granted", [(), (PORT + 1,)])
def test_port_not_granted_faults(granted) -> None:
    recorder, pushed_rip, out_address = run_user_out(bitmap_granting(*granted))
    assert recorder.writes == [] and pushed_rip == out_address


@needs_as
def test_word_access_needs_both_ports() -> None:
    recorder, pushed_rip, out_address = run_user_out(bitmap_granting(PORT), size=2)
    assert recorder.writes == [] and pushed_rip == out_address
    recorder, _, _ = run_user_out(bitmap_granting(PORT, PORT + 1), size=2)
    assert recorder.writes == [(0, 2, 0x42)]


@needs_as
def test_bitmap_offset_past_the_tss_limit_denies_every_port() -> None:
    bitmap = bitmap_granting(PORT)
    recorder, pushed_rip, out_address = run_user_out(bitmap, iomap_offset=IOMAP_OFFSET + len(bitmap))
    assert recorder.writes == [] and pushed_rip == out_address

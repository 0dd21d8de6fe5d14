"""Writes to pages holding translated blocks drop only the blocks whose bytes they overlap.

The kernel patches its own text a few bytes at a time (alternatives, jump labels, static
calls); a write beside a block leaves the block, its translation and the chains alone.
"""

from __future__ import annotations

from pyhv.accel.tcg.cpu import CODE_WRITE_MISSES, StopReason

from .harness import CODE, assemble, long_mode_cpu, needs_as, run_to_hlt

LOOP = """
        mov $100, %ecx
    1:  inc %rax
        dec %ecx
        jnz 1b
        hlt
"""
LOOP_START = CODE + 5  # after the 5-byte mov
DATA = CODE + 0x800  # the same page, well past the code


def _looped_cpu():
    memory, cpu = long_mode_cpu(assemble(LOOP))
    cpu.translate_after = 0
    run_to_hlt(cpu)
    block = cpu.blocks[LOOP_START]
    assert block.fn is not None and cpu.registers()["rax"] == 100
    return memory, cpu, block


@needs_as
def test_a_write_beside_a_block_keeps_it() -> None:
    _, cpu, block = _looped_cpu()
    epoch = cpu.mmu.epoch
    cpu.mmu.write(DATA, 8, 0x1234)
    assert cpu.blocks[LOOP_START] is block
    assert cpu.mmu.epoch == epoch  # the chains stay too


@needs_as
def test_a_write_into_a_block_drops_it_and_the_new_code_runs() -> None:
    _, cpu, block = _looped_cpu()
    # inc %rax (48 ff c0) becomes dec %rax (48 ff c8).
    cpu.mmu.write(LOOP_START + 2, 1, 0xC8)
    assert cpu.blocks.get(LOOP_START) is not block
    cpu.set_registers({"rip": CODE, "rax": 0})
    run_to_hlt(cpu)
    assert cpu.registers()["rax"] == (-100) & (2**64 - 1)


@needs_as
def test_a_write_to_the_second_page_of_a_straddling_instruction_drops_its_block() -> None:
    pad = 0x1000 - 3  # the 5-byte mov starts 3 bytes before the page boundary
    code = assemble(f".fill {pad}, 1, 0x90\nmov $0x11223344, %eax\nhlt")
    memory, cpu = long_mode_cpu(code)
    cpu.translate_after = 0
    run_to_hlt(cpu, limit=10_000)
    assert cpu.registers()["rax"] == 0x11223344
    cpu.mmu.write(CODE + 0x1000, 1, 0x99)  # the mov's immediate, byte 0x22
    cpu.set_registers({"rip": CODE})
    run_to_hlt(cpu, limit=10_000)
    assert cpu.registers()["rax"] == 0x11993344


@needs_as
def test_a_page_whose_writes_keep_missing_its_blocks_becomes_a_data_page() -> None:
    _, cpu, block = _looped_cpu()
    page = CODE >> 12
    for n in range(CODE_WRITE_MISSES):
        cpu.mmu.write(DATA, 8, n)
        assert page in cpu.page_blocks
    cpu.mmu.write(DATA, 8, 99)
    assert page not in cpu.page_blocks and LOOP_START not in cpu.blocks
    cpu.mmu.write(DATA, 8, 100)  # the slow path maps the page for writing again
    delta = cpu.mmu.w.get(DATA >> 12)  # the write map holds physical minus linear
    assert delta is not None and (DATA & ~0xFFF) + delta == CODE


@needs_as
def test_a_device_write_over_translated_code_drops_it_before_the_next_block() -> None:
    """DMA (a virtio buffer) over code: another thread tells the CPU, which drops the block."""
    memory, cpu, block = _looped_cpu()
    cpu.translate_after = 0
    new = assemble(LOOP.replace("inc %rax", "dec %rax"))
    memory.write(CODE, new)  # what the device writes
    memory.note_device_write(CODE, len(new))
    assert cpu.blocks.get(LOOP_START) is block  # dropped on the vCPU's thread, in run()
    cpu.set_registers({"rip": CODE, "rax": 0})
    assert cpu.run(1000).reason == StopReason.EXIT_REQUEST
    assert LOOP_START not in cpu.blocks
    run_to_hlt(cpu)
    assert cpu.registers()["rax"] == (-100) & (2**64 - 1)


@needs_as
def test_a_device_write_beside_code_does_not_stop_the_cpu() -> None:
    _, cpu, block = _looped_cpu()
    cpu.memory.note_device_write(CODE + 0x1000, 0x1000)  # the next page: no blocks there
    assert not cpu.exit_request


@needs_as
def test_a_block_built_over_decoded_bytes_reuses_their_instructions_until_they_change() -> None:
    _, cpu, block = _looped_cpu()
    dec_ecx = block.insns[1]  # inc %rax (3 bytes), then dec %ecx
    assert dec_ecx.addr == LOOP_START + 3
    # A block that begins inside the loop's (a jump target there) decodes nothing again.
    inside = cpu._build_block(LOOP_START + 3, LOOP_START + 3)
    assert inside.insns[0] is dec_ecx
    # dec %ecx (ff c9) becomes inc %ecx (ff c1): the bytes differ, so it is decoded anew.
    cpu.mmu.write(LOOP_START + 4, 1, 0xC1)
    rebuilt = cpu._build_block(LOOP_START + 3, LOOP_START + 3)
    assert rebuilt.insns[0] is not dec_ecx
    assert rebuilt.insns[0].spec.name != dec_ecx.spec.name

"""Shared set-up for software-CPU tests: assemble code, build a small machine, run it.

``long_mode_cpu`` builds a 4 MiB guest already in 64-bit mode: identity-mapped with 2 MiB
pages (PML4 0x1000, PDPT 0x2000, PD 0x3000) and mapped a second time at ``KERNEL_BASE``
(0xffffffff80000000, where Linux puts its text; PDPT 0x7000), a GDT at 0x500, an IDT at 0x4000 whose vector
``v`` handler at 0x5000 + 16*v does ``mov $v, %r15d; hlt``, code at 0x10000 and the stack
top at 0x80000. ``protected_mode_cpu`` and ``real_mode_cpu`` do the same for 32-bit flat
protected mode without paging and for real mode.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Dict, Optional

import pytest

from pyhv.accel.tcg import Cpu, StopReason
from pyhv.bus import Bus
from pyhv.cpu_state import (CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME,
                            EFER_NXE, EFER_SCE, CpuBootState, Segment, TableRegister)
from pyhv.memory import GuestMemory, MiB

CODE = 0x10000
STACK_TOP = 0x80000
IDT = 0x4000
GDT = 0x500
HANDLERS = 0x5000
PML4, PDPT, PD = 0x1000, 0x2000, 0x3000
KERNEL_PDPT = 0x7000
KERNEL_BASE = 0xFFFF_FFFF_8000_0000

needs_as = pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None,
                              reason="GNU as and objcopy (binutils) are needed to assemble test code")

_cache: Dict[tuple, bytes] = {}


def assemble(source: str, bits: int = 64) -> bytes:
    """Assemble AT&T ``source`` for a ``bits``-bit segment into raw bytes."""
    key = (source, bits)
    if key in _cache:
        return _cache[key]
    directive = {16: ".code16", 32: ".code32", 64: ".code64"}[bits]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.s")
        obj = os.path.join(tmp, "t.o")
        out = os.path.join(tmp, "t.bin")
        with open(src, "w") as f:
            f.write(f"{directive}\n{source}\n")
        subprocess.run(["as", "--64", "-o", obj, src], check=True, capture_output=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", obj, out], check=True,
                       capture_output=True)
        with open(out, "rb") as f:
            data = f.read()
    _cache[key] = data
    return data


def _descriptor(base: int, limit: int, access: int, flags: int) -> int:
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
            | (((limit >> 16) & 0xF) << 48) | (flags << 52) | (((base >> 24) & 0xFF) << 56))


# Selectors: 0x08 code64, 0x10 data, 0x18 code32, 0x20 user code64 (DPL 3), 0x28 user data,
# 0x30 TSS (16 bytes in long mode).
GDT_ENTRIES = [0, _descriptor(0, 0xFFFFF, 0x9B, 0xA), _descriptor(0, 0xFFFFF, 0x93, 0xC),
               _descriptor(0, 0xFFFFF, 0x9B, 0xC), _descriptor(0, 0xFFFFF, 0xFB, 0xA),
               _descriptor(0, 0xFFFFF, 0xF3, 0xC)]
TSS = 0x6000


def _machine(ram: int = 4 * MiB):
    memory = GuestMemory(ram)
    pio = Bus("pio")
    mmio = Bus("mmio")
    return memory, Cpu(memory, pio, mmio)


def long_mode_cpu(code: bytes, regs: Optional[dict] = None, ram: int = 4 * MiB):
    memory, cpu = _machine(ram)
    memory.write_u64(PML4, PDPT | 0x7)
    memory.write_u64(PDPT, PD | 0x7)
    for n in range(min(ram, 1024 * MiB) // (2 * MiB)):  # one page directory: the first GiB
        memory.write_u64(PD + 8 * n, (n * 2 * MiB) | 0x87)
    memory.write_u64(PML4 + 8 * 511, KERNEL_PDPT | 0x7)
    memory.write_u64(KERNEL_PDPT + 8 * 510, PD | 0x7)
    for n, entry in enumerate(GDT_ENTRIES):
        memory.write_u64(GDT + 8 * n, entry)
    # 64-bit TSS descriptor at 0x30: RSP0 = 0x70000, IST1 = 0x60000.
    memory.write_u64(GDT + 0x30, _descriptor(TSS, 0x67, 0x89, 0))
    memory.write_u64(GDT + 0x38, 0)
    memory.write_u64(TSS + 4, 0x70000)
    memory.write_u64(TSS + 0x24, 0x60000)
    for v in range(256):
        handler = HANDLERS + 16 * v
        gate = (handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((handler >> 16) & 0xFFFF) << 48)
        memory.write_u64(IDT + 16 * v, gate)
        memory.write_u64(IDT + 16 * v + 8, handler >> 32)
        memory.write(handler, b"\x41\xbf" + v.to_bytes(4, "little") + b"\xf4")  # mov $v,%r15d; hlt
    memory.write(CODE, code)
    boot = CpuBootState(rip=CODE, rsp=STACK_TOP, rflags=0x2, cr0=CR0_PE | CR0_PG | CR0_ET | CR0_NE,
                        cr3=PML4, cr4=CR4_PAE, efer=EFER_LME | EFER_LMA | EFER_NXE | EFER_SCE,
                        cs=Segment.flat64_code(0x08), ds=Segment.flat32(0x10, False),
                        es=Segment.flat32(0x10, False), ss=Segment.flat32(0x10, False),
                        fs=Segment.flat32(0x10, False), gs=Segment.flat32(0x10, False),
                        gdt=TableRegister(GDT, 8 * 8 - 1), idt=TableRegister(IDT, 256 * 16 - 1))
    cpu.load_state(boot)
    cpu.s.tr = __import__("pyhv.accel.tcg.segments", fromlist=["x"]).cache_from_descriptor(
        0x30, memory.read_u64(GDT + 0x30))
    if regs:
        cpu.set_registers(regs)
    return memory, cpu


def protected_mode_cpu(code: bytes, regs: Optional[dict] = None, ram: int = 4 * MiB):
    memory, cpu = _machine(ram)
    for n, entry in enumerate(GDT_ENTRIES):
        memory.write_u64(GDT + 8 * n, entry)
    for v in range(256):
        handler = HANDLERS + 16 * v
        gate = (handler & 0xFFFF) | (0x18 << 16) | (0x8E << 40) | (((handler >> 16) & 0xFFFF) << 48)
        memory.write_u64(IDT + 8 * v, gate)
        memory.write(handler, b"\xb8" + v.to_bytes(4, "little") + b"\xf4")  # mov $v,%eax; hlt
    memory.write(CODE, code)
    boot = CpuBootState(rip=CODE, rsp=STACK_TOP, rflags=0x2, cr0=CR0_PE | CR0_ET | CR0_NE,
                        cs=Segment.flat32(0x18, True), ds=Segment.flat32(0x10, False),
                        es=Segment.flat32(0x10, False), ss=Segment.flat32(0x10, False),
                        fs=Segment.flat32(0x10, False), gs=Segment.flat32(0x10, False),
                        gdt=TableRegister(GDT, 8 * 8 - 1), idt=TableRegister(IDT, 256 * 8 - 1))
    cpu.load_state(boot)
    if regs:
        cpu.set_registers(regs)
    return memory, cpu


def real_mode_cpu(code: bytes, regs: Optional[dict] = None, ram: int = 1 * MiB):
    memory, cpu = _machine(ram)
    memory.write(CODE, code)
    boot = CpuBootState(rip=0, rsp=0xFFF0, cs=Segment.real_mode(CODE >> 4, code=True),
                        ss=Segment.real_mode(0x7000), idt=TableRegister(0, 0x3FF))
    cpu.load_state(boot)
    if regs:
        cpu.set_registers(regs)
    return memory, cpu


def run_to_hlt(cpu, limit: int = 100_000):
    result = cpu.run(limit)
    assert result.reason == StopReason.HLT, result
    return result


def run_asm(source: str, regs: Optional[dict] = None, **kwargs):
    """Assemble 64-bit ``source`` + hlt, run it in long mode, return (memory, cpu)."""
    memory, cpu = long_mode_cpu(assemble(source + "\nhlt"), regs, **kwargs)
    run_to_hlt(cpu)
    return memory, cpu


def flags_of(cpu) -> int:
    return cpu.registers()["rflags"]

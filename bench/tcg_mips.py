"""MIPS of the software CPU on a tight integer loop, interpreter and translator side by side.

    python bench/tcg_mips.py [instructions]      (run it under CPython and under PyPy)

The guest runs a 5-instruction loop in long mode. "interpreter" runs every block through
the per-instruction handlers (translation off); "translator" runs the generated Python
function of each block (see pyhv/accel/tcg/translate.py).
"""

from __future__ import annotations

import sys
import time
from typing import Optional

from pyhv.accel.tcg import Cpu
from pyhv.bus import Bus
from pyhv.cpu_state import CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, CpuBootState, Segment
from pyhv.memory import GuestMemory, MiB

# 1: add %rcx,%rax ; xor %rax,%rdx ; inc %rcx ; cmp %rbx,%rcx ; jne 1b   (5 instructions)
LOOP = bytes.fromhex("4801c8" "4831c2" "48ffc1" "4839d9" "75f2")


def measure(total: int, translate_after: Optional[int]) -> float:
    memory = GuestMemory(4 * MiB)
    memory.write_u64(0x1000, 0x2000 | 7)
    memory.write_u64(0x2000, 0x3000 | 7)
    memory.write_u64(0x3000, 0x87)
    memory.write(0x10000, LOOP)
    cpu = Cpu(memory, Bus("pio"), Bus("mmio"))
    cpu.translate_after = translate_after
    cpu.load_state(CpuBootState(rip=0x10000, rsp=0x80000, cr0=CR0_PE | CR0_PG | CR0_ET | CR0_NE,
                                cr3=0x1000, cr4=CR4_PAE, efer=EFER_LME | EFER_LMA,
                                cs=Segment.flat64_code(8), ss=Segment.flat32(0x10, False),
                                gprs={"rbx": 1 << 62}))
    warm = cpu.run(200_000)  # warm up (JIT on PyPy)
    assert warm.reason == "budget", warm
    start = time.perf_counter()
    done = cpu.run(total).instructions
    elapsed = time.perf_counter() - start
    assert done == total and cpu.instructions_retired == total + 200_000
    return done / elapsed / 1e6


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000
    name = sys.implementation.name
    for label, after in (("interpreter", None), ("translator", 2)):
        print(f"{name} {label}: {total} instructions, {measure(total, after):.2f} MIPS")


if __name__ == "__main__":
    main()

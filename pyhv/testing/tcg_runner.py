"""Snippets on the software CPU, in the same test map as the KVM oracle.

One :class:`Cpu` serves every snippet. Writing the snippet's code straight into guest RAM
bypasses the MMU's code-write tracking, so the block cache is dropped before each run.
Snippets go through the public ``Cpu.run()``: whichever execution path the CPU uses
(interpreter or block translator, see ``translate_after``) is what gets checked.
"""

from __future__ import annotations

import traceback
from typing import Dict, Union

from ..accel.tcg import Cpu, StopReason
from ..accel.tcg.segments import cache_from_descriptor
from ..bus import Bus
from ..memory import GuestMemory
from .layout import CODE, GDT, RAM_SIZE, TSS_SEL, boot_state, build_image
from .outcome import GPR_NAMES, Outcome, failed, outcome_at_stop

# Longest a snippet may run: a rep string instruction counts as one instruction.
MAX_INSTRUCTIONS = 64
KEEP_DEFAULT = "default"


class TcgRunner:
    """Runs snippets on the software CPU.

    ``translate_after`` overrides :attr:`Cpu.translate_after` (0: translate every block at
    once, None: interpret only); left out, the CPU's own default path runs.
    """

    def __init__(self, translate_after: Union[int, None, str] = KEEP_DEFAULT) -> None:
        self.memory = GuestMemory(RAM_SIZE)
        build_image(self.memory)
        self.cpu = Cpu(self.memory, Bus("pio"), Bus("mmio"))
        self.cpu.load_state(boot_state())
        self.cpu.s.tr = cache_from_descriptor(TSS_SEL, self.memory.read_u64(GDT + TSS_SEL),
                                              self.memory.read_u64(GDT + TSS_SEL + 8))
        if translate_after != KEEP_DEFAULT:
            self.cpu.translate_after = translate_after

    def run(self, code: bytes, gprs: Dict[str, int], rflags: int, image: Dict[int, bytes]) -> Outcome:
        memory = self.memory
        cpu = self.cpu
        memory.write(CODE, code)
        for addr, data in image.items():
            memory.write(addr, data)
        cpu.flush_blocks()
        values = {name: gprs.get(name, 0) for name in GPR_NAMES}
        values["rip"] = CODE
        values["rflags"] = rflags
        cpu.set_registers(values)
        try:
            result = cpu.run(MAX_INSTRUCTIONS)
        except Exception as err:  # a bug in the software CPU is a divergence, not a crash
            last = traceback.extract_tb(err.__traceback__)[-1]
            return failed(f"software CPU raised {type(err).__name__}: {err} "
                          f"({last.filename.rsplit('/', 1)[-1]}:{last.lineno})")
        if result.reason != StopReason.HLT:
            return failed(f"software CPU stopped: {result.reason} {result.detail}".rstrip())
        regs = cpu.registers()
        return outcome_at_stop(memory, [regs[name] for name in GPR_NAMES], regs["rip"],
                               regs["rflags"], regs["cr2"])

    def close(self) -> None:
        self.memory.close()

"""What one snippet run leaves behind, in the same shape for KVM and the software CPU."""

from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

from ..memory import GuestMemory
from .layout import (COMPARED_REGIONS, ERROR_CODE_VECTORS, FRAME_ERROR, FRAME_RFLAGS, FRAME_RIP,
                     FRAME_RSP, vector_of_stop)

GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
RSP_INDEX = 4
NO_VECTOR = -1


class Outcome(NamedTuple):
    """Registers at the end of a snippet, or at the faulting instruction if it raised.

    For an exception, ``rip``, ``rflags`` and RSP are taken from the frame the CPU pushed,
    so they describe the faulting instruction as the architecture defines it.
    """

    regs: Tuple[int, ...]  # the 16 GPRs in ModRM order (GPR_NAMES)
    rip: int
    rflags: int
    vector: int  # NO_VECTOR when the snippet reached its final hlt
    error_code: int  # -1 when the vector pushes none
    cr2: int  # compared only for #PF
    memory: bytes  # COMPARED_REGIONS, concatenated
    failure: str = ""  # the backend could not run the snippet (KVM emulation failure, crash)


def compared_memory(memory: GuestMemory) -> bytes:
    return b"".join(memory.read(addr, size) for addr, size in COMPARED_REGIONS)


def outcome_at_stop(memory: GuestMemory, gprs: Sequence[int], rip: int, rflags: int,
                    cr2: int) -> Outcome:
    """Build the outcome of a run that stopped on a hlt (the snippet's or a vector stub's)."""
    vector = vector_of_stop(rip)
    regs: List[int] = list(gprs)
    if vector == NO_VECTOR:
        return Outcome(tuple(regs), rip, rflags, NO_VECTOR, -1, 0, compared_memory(memory))
    regs[RSP_INDEX] = memory.read_u64(FRAME_RSP)
    error_code = memory.read_u64(FRAME_ERROR) & 0xFFFF_FFFF if vector in ERROR_CODE_VECTORS else -1
    return Outcome(tuple(regs), memory.read_u64(FRAME_RIP), memory.read_u64(FRAME_RFLAGS), vector,
                   error_code, cr2 if vector == 14 else 0, compared_memory(memory))


def failed(reason: str) -> Outcome:
    return Outcome((), 0, 0, NO_VECTOR, -1, 0, b"", reason)

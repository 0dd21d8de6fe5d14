"""Guest exceptions raised while an instruction runs.

A :class:`GuestFault` is the guest's problem, not pyhv's: the CPU catches it and delivers
the vector through the IDT. It therefore derives from ``Exception`` and not from
:class:`pyhv.errors.PyhvError` (see the note at the top of ``pyhv/errors.py``).
"""

from __future__ import annotations

from typing import Optional

DE, DB, NMI, BP, OF_VEC, BR, UD, NM, DF, TS, NP, SS_VEC, GP, PF, MF, AC, MC, XM = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19)

# Vectors whose delivery pushes an error code.
ERROR_CODE_VECTORS = frozenset((DF, TS, NP, SS_VEC, GP, PF, AC))
# Contributory exceptions: two of them in a row make a double fault.
CONTRIBUTORY = frozenset((DE, TS, NP, SS_VEC, GP))

# #PF error-code bits.
PF_PRESENT = 1 << 0
PF_WRITE = 1 << 1
PF_USER = 1 << 2
PF_RSVD = 1 << 3
PF_FETCH = 1 << 4


class GuestFault(Exception):
    """An exception the guest must see: vector, optional error code, CR2 for #PF.

    ``trap`` faults (int n, int3, into) return to the next instruction; other faults
    return to the faulting one. ``software`` marks int n / int3 / into for the DPL check.
    """

    def __init__(self, vector: int, error_code: Optional[int] = None, cr2: Optional[int] = None,
                 trap: bool = False, software: bool = False) -> None:
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.trap = trap
        self.software = software

    def __str__(self) -> str:
        code = "" if self.error_code is None else f" error code {self.error_code:#x}"
        cr2 = "" if self.cr2 is None else f" cr2 {self.cr2:#x}"
        return f"guest exception {self.vector}{code}{cr2}"


def ud() -> GuestFault:
    return GuestFault(UD)


def gp(code: int = 0) -> GuestFault:
    return GuestFault(GP, code)

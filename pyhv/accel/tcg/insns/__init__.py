"""Instruction families; importing this package fills the decoder's opcode table."""

from __future__ import annotations

from . import alu, bit, control, mov, muldiv, shift, stack, string, system, sysregs  # noqa: F401
from . import sse, sse_float, sse_int, x87  # noqa: F401

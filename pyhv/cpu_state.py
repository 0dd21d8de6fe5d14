"""The architectural state a boot loader asks the vCPU to start in.

Loaders (bzImage, ELF, multiboot) describe the entry state here; each accelerator turns
it into its own registers (KVM's regs/sregs, the software CPU's state). Field meanings
follow the x86 segment-descriptor cache, the same as ``struct kvm_segment``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

# Control-register and EFER bits that loaders use.
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11


@dataclass
class Segment:
    """A segment register with its hidden descriptor cache."""

    selector: int = 0
    base: int = 0
    limit: int = 0xFFFF
    type: int = 3  # read/write data, accessed
    s: int = 1  # code/data (not system)
    dpl: int = 0
    present: int = 1
    db: int = 0  # default operand size 32-bit
    l: int = 0  # 64-bit code segment  # noqa: E741
    g: int = 0  # limit in 4 KiB units

    @classmethod
    def real_mode(cls, selector: int, code: bool = False) -> "Segment":
        return cls(selector=selector, base=selector << 4, limit=0xFFFF, type=0xB if code else 3)

    @classmethod
    def flat32(cls, selector: int, code: bool) -> "Segment":
        return cls(selector=selector, base=0, limit=0xFFFF_FFFF, type=0xB if code else 3, db=1, g=1)

    @classmethod
    def flat64_code(cls, selector: int) -> "Segment":
        return cls(selector=selector, base=0, limit=0xFFFF_FFFF, type=0xB, l=1, db=0, g=1)


@dataclass
class TableRegister:
    base: int = 0
    limit: int = 0xFFFF


def _real_mode_data() -> Segment:
    return Segment.real_mode(0)


@dataclass
class CpuBootState:
    """Entry state of the boot vCPU. Defaults are the x86 reset state, less the reset vector."""

    rip: int = 0xFFF0
    rsp: int = 0
    rflags: int = 0x2
    # General registers other than rsp/rip by lower-case name ("rax", "rbx", "rsi", "r8", ...).
    gprs: Dict[str, int] = field(default_factory=dict)
    cr0: int = CR0_ET | CR0_NE
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    cs: Segment = field(default_factory=lambda: Segment.real_mode(0, code=True))
    ds: Segment = field(default_factory=_real_mode_data)
    es: Segment = field(default_factory=_real_mode_data)
    fs: Segment = field(default_factory=_real_mode_data)
    gs: Segment = field(default_factory=_real_mode_data)
    ss: Segment = field(default_factory=_real_mode_data)
    gdt: TableRegister = field(default_factory=TableRegister)
    idt: TableRegister = field(default_factory=TableRegister)

    @property
    def long_mode(self) -> bool:
        return bool(self.efer & EFER_LMA)

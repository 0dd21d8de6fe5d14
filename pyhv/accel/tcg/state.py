"""Architectural state of the software x86-64 CPU.

Plain attributes, no behaviour beyond (de)serialisation: the decoder, MMU and instruction
families all read and write this object. :meth:`CpuState.to_dict` / :meth:`CpuState.from_dict`
use plain register names and unsigned values so that a differential harness against KVM can
compare states.

The general-purpose registers and the segment bases are held as *signed* 64-bit integers
(-2**63 <= v < 2**63, the same 64 bits read as two's complement), not as 0..2**64-1. The
Linux kernel lives at addresses of 2**63 and above, and on PyPy an integer that large is a
heap-allocated long whose every operation is a call: with unsigned registers nearly every
pointer operation of a kernel was one. The interpreter's operand accessors
(:mod:`.operands`) hand out unsigned values and store signed ones; the translated blocks
work in the signed form directly. RIP may be held in either form (the run loop folds it to
the signed one); anything that reports or compares registers outside the CPU takes them
through :func:`unsigned64`.
"""

from __future__ import annotations

from typing import Any, Dict, List

from ...cpu_state import CpuBootState, Segment
from .fpu import X87State

# General-purpose register numbers, in ModRM/REX order.
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# Segment register numbers, in the order of the sreg field of ModRM.
ES, CS, SS, DS, FS, GS = range(6)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")

# RFLAGS bits.
CF = 1 << 0
PF = 1 << 2
AF = 1 << 4
ZF = 1 << 6
SF = 1 << 7
TF = 1 << 8
IF = 1 << 9
DF = 1 << 10
OF = 1 << 11
IOPL = 3 << 12
NT = 1 << 14
RF = 1 << 16
VM = 1 << 17
AC = 1 << 18
VIF = 1 << 19
VIP = 1 << 20
ID = 1 << 21
ARITH_FLAGS = CF | PF | AF | ZF | SF | OF
RFLAGS_FIXED = 1 << 1  # bit 1 always reads as one

# Well-known MSRs.
MSR_TSC = 0x10
MSR_APIC_BASE = 0x1B
MSR_SYSENTER_CS = 0x174
MSR_SYSENTER_ESP = 0x175
MSR_SYSENTER_EIP = 0x176
MSR_PAT = 0x277
MSR_EFER = 0xC000_0080
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_CSTAR = 0xC000_0083
MSR_FMASK = 0xC000_0084
MSR_FS_BASE = 0xC000_0100
MSR_GS_BASE = 0xC000_0101
MSR_KERNEL_GS_BASE = 0xC000_0102
MSR_TSC_AUX = 0xC000_0103

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
WRAP64 = 1 << 64


try:  # PyPy: machine-word addition, which also turns a long integer in range into a word
    from __pypy__.intop import int_add as _int_add
except ImportError:
    _int_add = None


def _signed64_value(value: int) -> int:
    top = value >> 63
    if top == 0 or top == -1:  # already in range: no long-integer mask on PyPy
        return value
    value &= MASK64
    return value - WRAP64 if value >> 63 else value


def _signed64_word(value: int) -> int:
    # On PyPy an integer stays a long through every operation once one made it a long, even
    # when its value fits a machine word (``small & MASK64``, ``x - WRAP64`` and a struct "Q"
    # field all give one), and every value computed from it is a long too: in the Debian
    # boot RFLAGS was a long 94% of the time and RIP 43% before the CPU's values went
    # through here (see tests/tcg/test_machine_words.py).
    return _int_add(_signed64_value(value), 0)


#: signed64(value): the signed 64-bit integer with the same low 64 bits as ``value`` (the
#: register form); on PyPy always a machine word, never a long integer.
signed64 = _signed64_value if _int_add is None else _signed64_word


def unsigned64(value: int) -> int:
    """A register-form (or already unsigned) 64-bit ``value`` as 0..2**64-1: how registers
    are reported and compared outside the CPU."""
    return value + WRAP64 if value < 0 else value


class SegmentCache:
    """A segment register: selector plus the hidden descriptor cache."""

    __slots__ = ("selector", "base", "limit", "type", "s", "dpl", "present", "db", "l", "g")

    def __init__(self, selector: int = 0, base: int = 0, limit: int = 0xFFFF, type: int = 3,
                 s: int = 1, dpl: int = 0, present: int = 1, db: int = 0, l: int = 0,  # noqa: E741
                 g: int = 0) -> None:
        self.selector = selector
        self.base = base
        self.limit = limit
        self.type = type
        self.s = s
        self.dpl = dpl
        self.present = present
        self.db = db
        self.l = l  # noqa: E741
        self.g = g

    @classmethod
    def from_boot(cls, seg: Segment) -> "SegmentCache":
        return cls(seg.selector, signed64(seg.base), seg.limit, seg.type, seg.s, seg.dpl,
                   seg.present, seg.db, seg.l, seg.g)

    def to_dict(self) -> Dict[str, int]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["base"] = unsigned64(self.base)
        return out

    @classmethod
    def from_dict(cls, values: Dict[str, int]) -> "SegmentCache":
        segment = cls(**values)
        segment.base = signed64(segment.base)
        return segment

    def __repr__(self) -> str:
        return (f"SegmentCache(sel={self.selector:#x}, base={unsigned64(self.base):#x}, "
                f"limit={self.limit:#x}, "
                f"type={self.type:#x}, dpl={self.dpl}, db={self.db}, l={self.l})")


class CpuState:
    """Registers, flags, segment caches, control registers and MSRs of one vCPU.

    Arithmetic flags are lazy: ``cc_op`` names the last flag-setting operation and
    ``cc_a``/``cc_b``/``cc_res`` its operands; see :mod:`.flags`. ``rflags`` holds every
    other flag, and the arithmetic ones only while ``cc_op`` is ``CC_EAGER``.
    """

    def __init__(self) -> None:
        self.regs: List[int] = [0] * 16
        self.rip = 0xFFF0
        self.rflags = RFLAGS_FIXED
        self.cc_op = 0
        self.cc_size = 4
        self.cc_a = 0
        self.cc_b = 0
        self.cc_res = 0
        self.cc_cf = 0  # carry preserved across inc/dec
        self.segs: List[SegmentCache] = [SegmentCache() for _ in range(6)]
        self.segs[CS].type = 0xB
        self.segs[CS].selector = 0xF000
        self.segs[CS].base = 0xFFFF_0000
        self.ldtr = SegmentCache(type=2, s=0)
        self.tr = SegmentCache(type=0xB, s=0)
        self.gdtr_base = 0
        self.gdtr_limit = 0xFFFF
        self.idtr_base = 0
        self.idtr_limit = 0xFFFF
        self.cr0 = 0x6000_0010
        self.cr2 = 0
        self.cr3 = 0
        self.cr4 = 0
        self.cr8 = 0
        self.efer = 0
        self.cpl = 0
        self.xcr0 = 1
        self.msrs: Dict[int, int] = {MSR_PAT: 0x0007_0406_0007_0406, MSR_APIC_BASE: 0xFEE0_0900}
        # 16 XMM registers as 128-bit integers, MXCSR.
        self.xmm: List[int] = [0] * 16
        self.mxcsr = 0x1F80
        self.x87 = X87State()
        self.tsc_offset = 0

    # --- plain-dict import/export, for tests and a differential harness against KVM -------
    def to_dict(self) -> Dict[str, Any]:
        from .flags import read_rflags
        out: Dict[str, Any] = {name: unsigned64(self.regs[i]) for i, name in enumerate(GPR_NAMES)}
        out.update(rip=unsigned64(self.rip), rflags=read_rflags(self), cr0=self.cr0, cr2=self.cr2,
                   cr3=self.cr3, cr4=self.cr4, cr8=self.cr8, efer=self.efer, cpl=self.cpl,
                   gdt=(self.gdtr_base, self.gdtr_limit), idt=(self.idtr_base, self.idtr_limit),
                   ldtr=self.ldtr.to_dict(), tr=self.tr.to_dict(), msrs=dict(self.msrs),
                   xmm=list(self.xmm), mxcsr=self.mxcsr)
        for i, name in enumerate(SEG_NAMES):
            out[name] = self.segs[i].to_dict()
        return out

    def update_from_dict(self, values: Dict[str, Any]) -> None:
        """Set every register named in ``values``; others keep their value."""
        from .flags import write_rflags
        for i, name in enumerate(GPR_NAMES):
            if name in values:
                self.regs[i] = signed64(values[name])
        for name in ("rip", "cr0", "cr2", "cr3", "cr4", "cr8", "efer", "cpl", "mxcsr"):
            if name in values:
                setattr(self, name, values[name])
        if "rflags" in values:
            write_rflags(self, values["rflags"])
        for i, name in enumerate(SEG_NAMES):
            if name in values:
                self.segs[i] = SegmentCache.from_dict(values[name])
        if "ldtr" in values:
            self.ldtr = SegmentCache.from_dict(values["ldtr"])
        if "tr" in values:
            self.tr = SegmentCache.from_dict(values["tr"])
        if "gdt" in values:
            self.gdtr_base, self.gdtr_limit = values["gdt"]
        if "idt" in values:
            self.idtr_base, self.idtr_limit = values["idt"]
        if "msrs" in values:
            self.msrs.update(values["msrs"])
        if "xmm" in values:
            self.xmm = list(values["xmm"])

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "CpuState":
        state = cls()
        state.update_from_dict(values)
        return state

    def load_boot_state(self, boot: CpuBootState) -> None:
        from .flags import write_rflags
        self.regs = [0] * 16
        for name, value in boot.gprs.items():
            if name not in GPR_NAMES:
                raise ValueError(f"CpuBootState.gprs names an unknown register {name!r}")
            self.regs[GPR_NAMES.index(name)] = signed64(value)
        self.regs[RSP] = signed64(boot.rsp)
        self.rip = boot.rip
        write_rflags(self, boot.rflags)
        self.cr0, self.cr3, self.cr4, self.efer = boot.cr0, boot.cr3, boot.cr4, boot.efer
        for i, name in enumerate(SEG_NAMES):
            self.segs[i] = SegmentCache.from_boot(getattr(boot, name))
        self.gdtr_base, self.gdtr_limit = boot.gdt.base, boot.gdt.limit
        self.idtr_base, self.idtr_limit = boot.idt.base, boot.idt.limit
        self.cpl = self.segs[CS].dpl if self.cr0 & 1 else 0

    # --- derived mode bits --------------------------------------------------------------
    @property
    def long_mode(self) -> bool:
        return bool(self.efer & (1 << 10))

    @property
    def code_bits(self) -> int:
        """Width of the current code segment: 16, 32 or 64."""
        cs = self.segs[CS]
        if self.efer & (1 << 10) and cs.l:
            return 64
        if self.cr0 & 1 and cs.db:
            return 32
        return 16

    @property
    def stack_bits(self) -> int:
        if self.code_bits == 64:
            return 64
        return 32 if (self.cr0 & 1 and self.segs[SS].db) else 16

"""CPU models: the CPUID a guest sees, shared by every accelerator.

``pyhv64`` (alias ``qemu64``) is the default baseline: x86-64 with SSE2 and nothing newer
(no SSE3, no CX16, no XSAVE, no AVX) but SERIALIZE, so the software CPU can implement exactly
what it advertises. ``host`` passes through what KVM supports (KVM only).
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

from .errors import ConfigError

Regs = Tuple[int, int, int, int]  # eax, ebx, ecx, edx

# CPUID.1:EDX
FPU, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC = (1 << b for b in (0, 2, 3, 4, 5, 6, 7, 8, 9))
SEP, MTRR, PGE, MCA, CMOV, PAT, PSE36, CLFSH = (1 << b for b in (11, 12, 13, 14, 15, 16, 17, 19))
MMX, FXSR, SSE, SSE2 = (1 << b for b in (23, 24, 25, 26))
# CPUID.1:ECX. TSC_DEADLINE: the local APIC timer has TSC-deadline mode; Linux then skips
# calibrating the APIC timer against the PIT (100 ms of busy waiting).
TSC_DEADLINE, HYPERVISOR = 1 << 24, 1 << 31
# CPUID.80000001:EDX / ECX
EXT_SYSCALL, EXT_NX, EXT_LM = 1 << 11, 1 << 20, 1 << 29
EXT_LAHF_LM = 1 << 0
# CPUID.7.0:EDX. SERIALIZE: Linux's sync_core then serializes with one instruction rather
# than an iret to itself, which it does after each of the thousands of code patches at boot.
SERIALIZE = 1 << 14
# CPUID.80000007:EDX: the TSC runs at a constant rate (Linux then trusts it as a clocksource).
INVARIANT_TSC = 1 << 8

BASELINE_EDX = (FPU | DE | PSE | TSC | MSR | PAE | MCE | CX8 | APIC | SEP | MTRR | PGE | MCA | CMOV | PAT
                | PSE36 | CLFSH | MMX | FXSR | SSE | SSE2)

BRAND_STRING = "pyhv Virtual CPU (pyhv64)"


def _str_regs(text: str) -> Tuple[int, ...]:
    raw = text.encode("ascii")
    return tuple(int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4))


def _signature(family: int, model: int, stepping: int) -> int:
    ext_family = max(family - 0xF, 0)
    return ((model >> 4) << 16) | (ext_family << 20) | (min(family, 0xF) << 8) | ((model & 0xF) << 4) | stepping


class CpuModel:
    """A CPUID table keyed by (leaf, subleaf); leaves above the maximum answer like the last basic leaf."""

    def __init__(self, name: str, leaves: Dict[Tuple[int, int], Regs], indexed: Iterable[int] = ()) -> None:
        self.name = name
        self.leaves = leaves
        self.indexed_leaves = frozenset(indexed)  # leaves whose subleaf (ECX) matters
        self.max_basic = leaves[(0, 0)][0]
        self.max_extended = leaves.get((0x8000_0000, 0), (0x8000_0000, 0, 0, 0))[0]

    def cpuid(self, leaf: int, subleaf: int = 0, apic_id: int = 0) -> Regs:
        """What CPUID returns for EAX=leaf, ECX=subleaf on the vCPU with ``apic_id``."""
        if leaf >= 0x8000_0000:
            if leaf > self.max_extended:
                leaf = self.max_basic  # out-of-range leaves answer as the highest basic leaf
        elif leaf > self.max_basic and not (0x4000_0000 <= leaf < 0x4000_0100):
            leaf = self.max_basic
        key = (leaf, subleaf if leaf in self.indexed_leaves else 0)
        eax, ebx, ecx, edx = self.leaves.get(key, (0, 0, 0, 0))
        if leaf == 1:
            ebx = (ebx & 0x00FF_FFFF) | ((apic_id & 0xFF) << 24)
        return eax, ebx, ecx, edx


def pyhv64() -> CpuModel:
    vendor = _str_regs("AuthenticAMD")  # ebx, edx, ecx order: "Auth" "enti" "cAMD"
    signature = _signature(family=0xF, model=0x6B, stepping=1)
    brand = _str_regs(BRAND_STRING.ljust(47, " ") + "\0")
    leaves: Dict[Tuple[int, int], Regs] = {
        (0, 0): (0x7, vendor[0], vendor[2], vendor[1]),
        # EBX: CLFLUSH line 8*8 = 64 bytes, 1 logical processor per package.
        (1, 0): (signature, (1 << 16) | (8 << 8), TSC_DEADLINE | HYPERVISOR, BASELINE_EDX),
        (7, 0): (0, 0, 0, SERIALIZE),
        (0x8000_0000, 0): (0x8000_0008, vendor[0], vendor[2], vendor[1]),
        (0x8000_0001, 0): (signature, 0, EXT_LAHF_LM, EXT_SYSCALL | EXT_NX | EXT_LM),
        (0x8000_0002, 0): brand[0:4],
        (0x8000_0003, 0): brand[4:8],
        (0x8000_0004, 0): brand[8:12],
        (0x8000_0007, 0): (0, 0, 0, INVARIANT_TSC),
        (0x8000_0008, 0): (0x3028, 0, 0, 0),  # 48-bit linear, 40-bit physical addresses
    }
    return CpuModel("pyhv64", leaves, indexed=(7,))


MODELS = {"pyhv64": pyhv64, "qemu64": pyhv64}
DEFAULT_MODEL = "pyhv64"


def resolve(name: Optional[str]) -> Optional[CpuModel]:
    """The model for ``-cpu NAME``; None means ``host`` (pass KVM's supported CPUID through)."""
    name = (name or DEFAULT_MODEL).split(",")[0]
    if name in ("host", "max"):
        return None
    try:
        return MODELS[name]()
    except KeyError:
        known = ", ".join(sorted(MODELS) + ["host"])
        raise ConfigError(f"-cpu {name}: unknown CPU model (known: {known})") from None

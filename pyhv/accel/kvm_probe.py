"""Can this host's KVM run Linux? Asked before ``-accel kvm:tcg`` settles on KVM for a Linux guest.

Some KVM backends create VMs and run simple guests but cannot deliver a software interrupt
in long mode: the nested ``kvm_pvm`` backend of these development machines ends ``int3``
with a KVM emulation failure, and the Linux kernel executes ``int3`` early in its boot (its
int3 self-test, then text patching). Under ``-accel kvm:tcg`` that host would pick KVM and
stop a few hundred milliseconds into the boot, where QEMU users expect the fallback to the
software CPU. So before picking KVM for a Linux kernel, pyhv runs one ``int3`` in a small
long-mode VM (the differential harness's VM: page tables, GDT, TSS and an IDT whose stubs
halt) and checks that it reached the #BP handler. It costs about 50 ms, once per process.
"""

from __future__ import annotations

from typing import Dict, Optional

from ..errors import KvmError

INT3_THEN_HLT = b"\xcc\xf4"
BREAKPOINT_VECTOR = 3
_answers: Dict[str, Optional[str]] = {}


def linux_blocker(kvm_path: str = "/dev/kvm") -> Optional[str]:
    """None when KVM at ``kvm_path`` delivers ``int3`` in long mode; else why Linux cannot run.

    A KVM that cannot be opened at all is not answered here: creating the accelerator reports
    that with its own message.
    """
    if kvm_path not in _answers:
        _answers[kvm_path] = _probe(kvm_path)
    return _answers[kvm_path]


def _probe(kvm_path: str) -> Optional[str]:
    from ..testing.kvm_oracle import KvmOracle

    try:
        oracle = KvmOracle(kvm_path)
    except KvmError:
        return None
    try:
        outcome = oracle.run(INT3_THEN_HLT, {}, 0x2, {})
    finally:
        oracle.close()
    if outcome.failure:
        return (f"this host's KVM cannot deliver int3 in long mode ({outcome.failure}), "
                "which the Linux kernel needs")
    if outcome.vector != BREAKPOINT_VECTOR:
        return f"int3 under this host's KVM raised vector {outcome.vector}, not #BP"
    return None

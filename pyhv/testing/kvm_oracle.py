"""The oracle: snippets run on the real CPU behind /dev/kvm, one VM and vCPU for all of them.

Per snippet only the snippet's bytes, the seeded data pages and the general registers
change (KVM_SET_REGS); the long-mode system state is set once. The vCPU stops on the
snippet's final ``hlt`` or on the ``hlt`` of an exception stub (see :mod:`.layout`).
"""

from __future__ import annotations

from typing import Dict, Optional

from ..errors import KvmError
from ..kvm import exits as ex
from ..kvm import structs as s
from ..kvm.system import Kvm
from ..memory import GuestMemory
from .layout import CODE, RAM_SIZE, boot_state, build_image, tss_segment
from .outcome import GPR_NAMES, Outcome, failed, outcome_at_stop

# A snippet is straight-line code; this many exits without reaching a hlt means it is stuck.
MAX_EXITS = 16


class KvmOracleError(KvmError):
    """The KVM test VM could not be set up."""


def _kvm_segment(seg) -> s.kvm_segment:
    return s.kvm_segment(base=seg.base, limit=seg.limit, selector=seg.selector, type=seg.type,
                         present=seg.present, dpl=seg.dpl, db=seg.db, s=seg.s, l=seg.l, g=seg.g)


class KvmOracle:
    """Runs snippets on /dev/kvm in the test map of :mod:`.layout`."""

    def __init__(self, kvm_path: str = "/dev/kvm") -> None:
        self.memory = GuestMemory(RAM_SIZE)
        build_image(self.memory)
        self.kvm = Kvm(kvm_path)
        try:
            self.vm = self.kvm.create_vm()
            region = self.memory.regions[0]
            self.vm.set_user_memory_region(0, region.guest_addr, region.size,
                                           self.memory.host_address(region))
            self.vcpu = self.vm.create_vcpu(0)
            self.vcpu.set_cpuid2(self.kvm.supported_cpuid())
            self._set_system_state()
        except KvmError as err:
            self.close()
            raise KvmOracleError(f"cannot set up the differential test VM on {kvm_path}: {err}") from err
        self._regs = s.kvm_regs()

    def _set_system_state(self) -> None:
        state = boot_state()
        sregs = self.vcpu.get_sregs()
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, _kvm_segment(getattr(state, name)))
        sregs.tr = _kvm_segment(tss_segment())
        sregs.gdt.base, sregs.gdt.limit = state.gdt.base, state.gdt.limit
        sregs.idt.base, sregs.idt.limit = state.idt.base, state.idt.limit
        sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = state.cr0, state.cr3, state.cr4, state.efer
        self.vcpu.set_sregs(sregs)

    def run(self, code: bytes, gprs: Dict[str, int], rflags: int, image: Dict[int, bytes]) -> Outcome:
        """Run ``code`` (ending in hlt) from ``gprs``/``rflags`` with ``image`` written first."""
        memory = self.memory
        memory.write(CODE, code)
        for addr, data in image.items():
            memory.write(addr, data)
        regs = self._regs
        for name in GPR_NAMES:
            setattr(regs, name, gprs.get(name, 0))
        regs.rip = CODE
        regs.rflags = rflags
        self.vcpu.set_regs(regs)
        stop: Optional[str] = None
        for _ in range(MAX_EXITS):
            exit_ = self.vcpu.run()
            if isinstance(exit_, ex.Hlt):
                break
            if isinstance(exit_, ex.Interrupted):
                continue
            stop = _describe(exit_)
            break
        else:
            stop = f"no hlt after {MAX_EXITS} exits"
        if stop is not None:
            return failed(f"KVM: {stop}")
        out = self.vcpu.get_regs()
        cr2 = self.vcpu.get_sregs().cr2
        return outcome_at_stop(memory, [getattr(out, name) for name in GPR_NAMES], out.rip,
                               out.rflags, cr2)

    def close(self) -> None:
        for name in ("vcpu", "vm", "kvm"):
            obj = getattr(self, name, None)
            if obj is not None:
                obj.close()
        self.memory.close()


def _describe(exit_) -> str:
    if isinstance(exit_, ex.InternalError):
        kind = ex.INTERNAL_ERROR_NAMES.get(exit_.suberror, f"suberror {exit_.suberror}")
        return f"internal error: {kind}"
    return f"unexpected exit {type(exit_).__name__}{tuple(exit_)}"

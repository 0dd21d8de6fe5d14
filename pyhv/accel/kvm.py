"""The KVM accelerator: VM set-up policy (irqchip, PIT, memory slots, CPUID) and the vCPU loop.

The loop itself is small: KVM exits are typed values (pyhv.kvm.exits); :class:`ExitHandler`
maps each to a bus access or a stop request, and is a pure object testable with fake exits.
"""

from __future__ import annotations

import logging
import signal
import time
import threading
from typing import Callable, Dict, List, Optional

from ..bus import Bus
from ..cpu_model import CpuModel
from ..cpu_state import CpuBootState, Segment
from ..errors import AccelError, GuestAddressError, KvmError, VmFatalError
from ..irq import CallbackIrqLine, IrqLine
from ..lifecycle import Lifecycle, Reset, Shutdown, StopRequest
from ..memory import GuestMemory
from ..kvm import exits as ex
from ..kvm import structs as s
from ..kvm.system import Kvm
from ..kvm.vcpu import VcpuFd
from ..kvm.vm import VmFd
from .base import PauseGate, Platform

log = logging.getLogger("pyhv.accel.kvm")

# Three pages just below the BIOS area at the top of 4 GiB, as QEMU places them; the
# MMIO hole keeps them clear of RAM.
TSS_ADDR = 0xFFFB_D000
IDENTITY_MAP_ADDR = 0xFFFB_C000

MSR_IA32_APICBASE = 0x1B
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_MISC_ENABLE_FAST_STRING = 1
MSR_IA32_TSC = 0x10

KICK_SIGNAL = signal.SIGUSR1
REGISTER_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
                  "r12", "r13", "r14", "r15", "rip", "rflags")


class ExitHandler:
    """Turns one vCPU exit into bus traffic, and says whether the vCPU keeps running.

    ``handle(exit)`` returns None to continue, or a StopRequest. IoIn/MmioRead answers are
    returned through the ``complete_in`` / ``complete_mmio`` callbacks.
    """

    def __init__(self, pio: Bus, mmio: Bus, complete_in: Callable[[bytes], None],
                 complete_mmio: Callable[[bytes], None], describe_cpu: Callable[[], str] = lambda: "") -> None:
        self.pio = pio
        self.mmio = mmio
        self._complete_in = complete_in
        self._complete_mmio = complete_mmio
        self._describe_cpu = describe_cpu
        self.table: Dict[type, Callable] = {
            ex.IoOut: self._io_out,
            ex.IoIn: self._io_in,
            ex.MmioWrite: self._mmio_write,
            ex.MmioRead: self._mmio_read,
            ex.Hlt: self._ignore,
            ex.Interrupted: self._ignore,
            ex.DebugExit: self._ignore,
            ex.Shutdown: self._triple_fault,
            ex.SystemEvent: self._system_event,
            ex.InternalError: self._internal_error,
            ex.FailEntry: self._fail_entry,
            ex.UnknownExit: self._unknown,
        }

    def handle(self, exit_) -> Optional[StopRequest]:
        return self.table[type(exit_)](exit_)

    def _io_out(self, e: ex.IoOut) -> None:
        size = e.size
        if e.count == 1:
            self.pio.write(e.port, size, int.from_bytes(e.data, "little"))
            return None
        data = e.data
        for i in range(0, size * e.count, size):
            self.pio.write(e.port, size, int.from_bytes(data[i:i + size], "little"))
        return None

    def _io_in(self, e: ex.IoIn) -> None:
        size = e.size
        if e.count == 1:
            self._complete_in(self.pio.read(e.port, size).to_bytes(size, "little"))
            return None
        self._complete_in(b"".join(self.pio.read(e.port, size).to_bytes(size, "little") for _ in range(e.count)))
        return None

    def _mmio_write(self, e: ex.MmioWrite) -> None:
        self.mmio.write(e.addr, e.size, int.from_bytes(e.data, "little"))
        return None

    def _mmio_read(self, e: ex.MmioRead) -> None:
        self._complete_mmio(self.mmio.read(e.addr, e.size).to_bytes(e.size, "little"))
        return None

    @staticmethod
    def _ignore(_e) -> None:
        return None

    @staticmethod
    def _triple_fault(_e: ex.Shutdown) -> StopRequest:
        return Reset("triple fault")

    @staticmethod
    def _system_event(e: ex.SystemEvent) -> StopRequest:
        if e.type == s.KVM_SYSTEM_EVENT_RESET:
            return Reset("guest reset")
        if e.type == s.KVM_SYSTEM_EVENT_SHUTDOWN:
            return Shutdown(0, "guest power-off")
        raise VmFatalError(f"guest crashed (KVM system event {e.type})")

    def _internal_error(self, e: ex.InternalError) -> StopRequest:
        kind = ex.INTERNAL_ERROR_NAMES.get(e.suberror, f"suberror {e.suberror}")
        detail = " ".join(f"{d:#x}" for d in e.data)
        raise VmFatalError(f"KVM internal error: {kind}" + (f" (data {detail})" if detail else "")
                           + self._describe_cpu())

    def _fail_entry(self, e: ex.FailEntry) -> StopRequest:
        raise VmFatalError(f"KVM could not enter the guest: hardware reason {e.hardware_reason:#x}"
                           + self._describe_cpu())

    def _unknown(self, e: ex.UnknownExit) -> StopRequest:
        raise VmFatalError(f"unhandled KVM exit reason {e.reason}" + self._describe_cpu())


def _kvm_segment(seg: Segment) -> s.kvm_segment:
    return s.kvm_segment(base=seg.base, limit=seg.limit, selector=seg.selector, type=seg.type,
                         present=seg.present, dpl=seg.dpl, db=seg.db, s=seg.s, l=seg.l, g=seg.g)


def cpuid_entries(model: CpuModel, supported: List[s.kvm_cpuid_entry2], apic_id: int) -> List[s.kvm_cpuid_entry2]:
    """The model's CPUID leaves as KVM entries, each feature word masked by what KVM supports."""
    support = {(e.function, e.index): e for e in supported}
    entries = []
    for (leaf, subleaf) in sorted(model.leaves):
        eax, ebx, ecx, edx = model.cpuid(leaf, subleaf, apic_id)
        if leaf in (1, 7, 0x8000_0001) and (leaf, subleaf) in support:
            host = support[(leaf, subleaf)]
            ecx &= host.ecx | (1 << 31)
            edx &= host.edx
            if leaf == 7:
                ebx &= host.ebx
        entry = s.kvm_cpuid_entry2(function=leaf, index=subleaf, eax=eax, ebx=ebx, ecx=ecx, edx=edx)
        if leaf in model.indexed_leaves:
            entry.flags = s.KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        entries.append(entry)
    return entries


class KvmAccelerator:
    """One VM with one vCPU on /dev/kvm, with the in-kernel irqchip and PIT."""

    name = "kvm"

    def __init__(self, platform: Platform, kvm_path: str = "/dev/kvm") -> None:
        self.platform = platform
        try:
            self.kvm = Kvm(kvm_path)
        except KvmError as err:
            raise AccelError(str(err)) from err
        self.vm: VmFd = self.kvm.create_vm()
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        # SPEAKER_DUMMY: the kernel PIT also answers port 0x61, which Linux polls to calibrate the TSC.
        self.vm.create_pit2(s.KVM_PIT_SPEAKER_DUMMY)
        self._map_memory(platform.memory)
        self.vcpu: VcpuFd = self.vm.create_vcpu(0)
        self._set_cpuid(platform.cpu_model)
        self.handler = ExitHandler(platform.pio, platform.mmio, self.vcpu.complete_io_in,
                                   self.vcpu.complete_mmio_read, self.describe_cpu)
        self._vcpu_thread: Optional[int] = None
        self._lines: Dict[int, CallbackIrqLine] = {}
        self._irq_lock = threading.Lock()
        self.doorbells = 0  # ioeventfds bound now
        self.pause_gate = PauseGate()
        platform.lifecycle.add_listener(self.kick)

    def _map_memory(self, memory: GuestMemory) -> None:
        for slot, region in enumerate(memory.regions):
            self.vm.set_user_memory_region(slot, region.guest_addr, region.size, memory.host_address(region))

    def _set_cpuid(self, model: Optional[CpuModel]) -> None:
        supported = self.kvm.supported_cpuid()
        if model is None:
            entries = supported
        else:
            entries = cpuid_entries(model, supported, apic_id=self.vcpu.id)
        self.vcpu.set_cpuid2(entries)

    # --- Accelerator interface --------------------------------------------------------
    def irq_line(self, gsi: int) -> IrqLine:
        line = self._lines.get(gsi)
        if line is None:
            line = self._lines[gsi] = CallbackIrqLine(gsi, self._set_irq)
        return line

    def _set_irq(self, gsi: int, level: bool) -> None:
        # Device threads (virtio I/O thread, serial input) and the vCPU thread share the one
        # kvm_irq_level buffer of VmFd.irq_line.
        with self._irq_lock:
            self.vm.irq_line(gsi, level)

    def doorbell(self, addr: int, length: int, datamatch: Optional[int], fd: int) -> Optional[Callable[[], None]]:
        """KVM_IOEVENTFD: the write completes inside KVM and signals ``fd``, with no exit."""
        match = -1 if datamatch is None else datamatch
        try:
            self.vm.ioeventfd(fd, addr, length, pio=False, datamatch=match)
        except KvmError as err:
            log.warning("KVM_IOEVENTFD at %#x+%d refused (%s); the notify stays an MMIO exit", addr, length, err)
            return None
        self.doorbells += 1

        def undo() -> None:
            if self.vm.fd >= 0:
                self.vm.ioeventfd(fd, addr, length, pio=False, datamatch=match, deassign=True)
                self.doorbells -= 1

        return undo

    def load_boot_state(self, state: CpuBootState) -> None:
        sregs = self.vcpu.get_sregs()
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, _kvm_segment(getattr(state, name)))
        sregs.gdt.base, sregs.gdt.limit = state.gdt.base, state.gdt.limit
        sregs.idt.base, sregs.idt.limit = state.idt.base, state.idt.limit
        sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = state.cr0, state.cr3, state.cr4, state.efer
        self.vcpu.set_sregs(sregs)
        regs = s.kvm_regs(rip=state.rip, rsp=state.rsp, rflags=state.rflags)
        for name, value in state.gprs.items():
            setattr(regs, name, value)
        self.vcpu.set_regs(regs)
        self.vcpu.set_msrs([(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING)])

    def run(self) -> StopRequest:
        lifecycle = self.platform.lifecycle
        self._vcpu_thread = threading.get_ident()
        previous = _install_kick_handler()
        try:
            vcpu_run = self.vcpu.run
            handle = self.handler.table
            gate = self.pause_gate
            while lifecycle.pending is None:
                if gate.requested:
                    gate.park(lifecycle)
                    self.vcpu.set_immediate_exit(False)  # the kick that paused us is consumed
                    continue
                exit_ = vcpu_run()
                stop = handle[type(exit_)](exit_)
                if stop is not None:
                    return stop
            return lifecycle.pending
        finally:
            self._vcpu_thread = None
            if previous is not None:
                signal.signal(KICK_SIGNAL, previous)

    def kick(self) -> None:
        """Make the vCPU leave KVM_RUN soon (called from any thread)."""
        self.vcpu.set_immediate_exit(True)
        self.pause_gate.wake()
        thread = self._vcpu_thread
        if thread is not None and thread != threading.get_ident():
            signal.pthread_kill(thread, KICK_SIGNAL)

    def clock_ns(self) -> int:
        return time.monotonic_ns()

    def msi_sink(self):
        """Where PCI devices send MSIs: KVM_SIGNAL_MSI into the in-kernel local APIC."""
        from ..devices.pci.sinks import KvmMsiSink

        return KvmMsiSink(self.vm.fd)

    def registers(self) -> Dict[str, int]:
        """The vCPU's registers by name, for the monitor (call while paused)."""
        regs = self.vcpu.get_regs()
        sregs = self.vcpu.get_sregs()
        values = {name: getattr(regs, name) for name in REGISTER_NAMES}
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            values[name] = getattr(sregs, name).selector
        values.update(cr0=sregs.cr0, cr2=sregs.cr2, cr3=sregs.cr3, cr4=sregs.cr4, efer=sregs.efer,
                      gdt_base=sregs.gdt.base, gdt_limit=sregs.gdt.limit,
                      idt_base=sregs.idt.base, idt_limit=sregs.idt.limit)
        return values

    def describe_cpu(self) -> str:
        """Registers and the instruction bytes at RIP, for fatal-exit messages."""
        try:
            regs = self.vcpu.get_regs()
            sregs = self.vcpu.get_sregs()
        except KvmError:
            return ""
        lines = [
            f"\n  RIP={regs.rip:#018x} RSP={regs.rsp:#018x} RFLAGS={regs.rflags:#x}",
            f"  RAX={regs.rax:#x} RBX={regs.rbx:#x} RCX={regs.rcx:#x} RDX={regs.rdx:#x}"
            f" RSI={regs.rsi:#x} RDI={regs.rdi:#x}",
            f"  CS={sregs.cs.selector:#x} CR0={sregs.cr0:#x} CR3={sregs.cr3:#x} CR4={sregs.cr4:#x}"
            f" EFER={sregs.efer:#x}",
        ]
        try:
            linear = (sregs.cs.base + regs.rip) & 0xFFFF_FFFF_FFFF_FFFF
            tr = self.vcpu.translate(linear)
            if tr.valid:
                code = self.platform.memory.read(tr.physical_address, 16)
                lines.append("  code at RIP: " + code.hex(" "))
        except (KvmError, GuestAddressError):
            pass
        return "\n".join(lines)

    def close(self) -> None:
        self.platform.lifecycle.remove_listener(self.kick)
        self.vcpu.close()
        self.vm.close()
        self.kvm.close()


def _install_kick_handler():
    """A no-op SIGUSR1 handler, so the signal interrupts KVM_RUN instead of killing us."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(KICK_SIGNAL, lambda _signum, _frame: None)

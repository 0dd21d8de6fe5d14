"""A KVM vCPU file descriptor: register access and ``run()`` returning typed exits."""

from __future__ import annotations

import mmap
import os
from fcntl import ioctl as _fcntl_ioctl
import struct
from typing import TYPE_CHECKING, Dict, Iterable, List, Sequence, Tuple

from ..errors import KvmError
from . import exits as ex
from . import ioctls as ic
from . import structs as s
from .syscall import EAGAIN, EINTR, ioctl

if TYPE_CHECKING:
    from .vm import VmFd

_KVM_RUN = ic.KVM_RUN
_U32 = struct.Struct("<I")
_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write
_INTERNAL = struct.Struct("<II")
_FAIL_ENTRY = struct.Struct("<QI")
_UNION = s.KVM_RUN_UNION

_INTERRUPTED = ex.Interrupted()
_HLT = ex.Hlt()
_SHUTDOWN = ex.Shutdown()
_DEBUG = ex.DebugExit()


class VcpuFd:
    def __init__(self, vm: "VmFd", fd: int, vcpu_id: int, mmap_size: int) -> None:
        self.vm = vm
        self.fd = fd
        self.id = vcpu_id
        self.run_map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._pending_in_offset = 0

    # --- run ----------------------------------------------------------------------------
    def run(self):  # -> one of pyhv.kvm.exits.*
        """Enter the guest until the next exit and return it as a typed value."""
        # The hottest line of the KVM path. fcntl.ioctl drops the GIL like ctypes' libc call
        # and costs less per call on PyPy (bench/ioctl_call.py).
        try:
            _fcntl_ioctl(self.fd, _KVM_RUN, 0)
        except OSError as err:
            if err.errno == EINTR or err.errno == EAGAIN:
                return _INTERRUPTED
            raise KvmError(f"KVM_RUN failed: {err.strerror}") from err
        run = self.run_map
        reason = _U32.unpack_from(run, s.KVM_RUN_EXIT_REASON)[0]
        if reason == s.KVM_EXIT_IO:
            direction, size, port, count, data_offset = _IO.unpack_from(run, _UNION)
            if direction == s.KVM_EXIT_IO_OUT:
                return ex.IoOut(port, size, count, run[data_offset:data_offset + size * count])
            self._pending_in_offset = data_offset
            return ex.IoIn(port, size, count)
        if reason == s.KVM_EXIT_MMIO:
            addr, data, length, is_write = _MMIO.unpack_from(run, _UNION)
            if is_write:
                return ex.MmioWrite(addr, length, data[:length])
            return ex.MmioRead(addr, length)
        return self._decode_rare(reason)

    def _decode_rare(self, reason: int):
        run = self.run_map
        if reason == s.KVM_EXIT_HLT:
            return _HLT
        if reason == s.KVM_EXIT_INTR:
            return _INTERRUPTED
        if reason == s.KVM_EXIT_SHUTDOWN:
            return _SHUTDOWN
        if reason == s.KVM_EXIT_DEBUG:
            return _DEBUG
        if reason == s.KVM_EXIT_INTERNAL_ERROR:
            suberror, ndata = _INTERNAL.unpack_from(run, _UNION)
            data = struct.unpack_from(f"<{min(ndata, 16)}Q", run, _UNION + 8)
            return ex.InternalError(suberror, data)
        if reason == s.KVM_EXIT_SYSTEM_EVENT:
            event_type, ndata = _INTERNAL.unpack_from(run, _UNION)
            data = struct.unpack_from(f"<{min(ndata, 16)}Q", run, _UNION + 8)
            return ex.SystemEvent(event_type, data)
        if reason == s.KVM_EXIT_FAIL_ENTRY:
            hw_reason, cpu = _FAIL_ENTRY.unpack_from(run, _UNION)
            return ex.FailEntry(hw_reason, cpu)
        return ex.UnknownExit(reason)

    def complete_io_in(self, data: bytes) -> None:
        """Hand the guest the bytes of the last IoIn (size * count bytes)."""
        off = self._pending_in_offset
        self.run_map[off:off + len(data)] = data

    def complete_mmio_read(self, data: bytes) -> None:
        off = _UNION + 8
        self.run_map[off:off + len(data)] = data

    def set_immediate_exit(self, value: bool) -> None:
        """Make the next KVM_RUN return at once (used to kick the vCPU from another thread)."""
        self.run_map[s.KVM_RUN_IMMEDIATE_EXIT] = 1 if value else 0

    # --- registers --------------------------------------------------------------------------
    def get_regs(self) -> s.kvm_regs:
        regs = s.kvm_regs()
        ioctl(self.fd, ic.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: s.kvm_regs) -> None:
        ioctl(self.fd, ic.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> s.kvm_sregs:
        sregs = s.kvm_sregs()
        ioctl(self.fd, ic.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: s.kvm_sregs) -> None:
        ioctl(self.fd, ic.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_fpu(self) -> s.kvm_fpu:
        fpu = s.kvm_fpu()
        ioctl(self.fd, ic.KVM_GET_FPU, fpu, "KVM_GET_FPU")
        return fpu

    def set_fpu(self, fpu: s.kvm_fpu) -> None:
        ioctl(self.fd, ic.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def get_msrs(self, indices: Sequence[int]) -> Dict[int, int]:
        buf = s.msrs_with_entries(len(indices))
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        count = ioctl(self.fd, ic.KVM_GET_MSRS, buf, "KVM_GET_MSRS")
        return {buf.entries[i].index: buf.entries[i].data for i in range(count)}

    def set_msrs(self, values: Iterable[Tuple[int, int]]) -> None:
        items = list(values)
        buf = s.msrs_with_entries(len(items))
        for i, (index, data) in enumerate(items):
            buf.entries[i].index = index
            buf.entries[i].data = data
        count = ioctl(self.fd, ic.KVM_SET_MSRS, buf, "KVM_SET_MSRS")
        if count != len(items):
            bad = items[count][0]
            raise KvmError(f"KVM_SET_MSRS rejected MSR {bad:#x}")

    def set_cpuid2(self, entries: Sequence[s.kvm_cpuid_entry2]) -> None:
        buf = s.cpuid_with_entries(len(entries))
        for i, entry in enumerate(entries):
            buf.entries[i] = entry
        ioctl(self.fd, ic.KVM_SET_CPUID2, buf, "KVM_SET_CPUID2")

    def get_lapic(self) -> s.kvm_lapic_state:
        state = s.kvm_lapic_state()
        ioctl(self.fd, ic.KVM_GET_LAPIC, state, "KVM_GET_LAPIC")
        return state

    def set_lapic(self, state: s.kvm_lapic_state) -> None:
        ioctl(self.fd, ic.KVM_SET_LAPIC, state, "KVM_SET_LAPIC")

    def get_vcpu_events(self) -> s.kvm_vcpu_events:
        events = s.kvm_vcpu_events()
        ioctl(self.fd, ic.KVM_GET_VCPU_EVENTS, events, "KVM_GET_VCPU_EVENTS")
        return events

    def set_vcpu_events(self, events: s.kvm_vcpu_events) -> None:
        ioctl(self.fd, ic.KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS")

    def get_mp_state(self) -> int:
        state = s.kvm_mp_state()
        ioctl(self.fd, ic.KVM_GET_MP_STATE, state, "KVM_GET_MP_STATE")
        return state.mp_state

    def translate(self, linear: int) -> s.kvm_translation:
        tr = s.kvm_translation(linear_address=linear)
        ioctl(self.fd, ic.KVM_TRANSLATE, tr, "KVM_TRANSLATE")
        return tr

    def close(self) -> None:
        self.run_map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


__all__: List[str] = ["VcpuFd"]

"""Typed vCPU exits: what :meth:`pyhv.kvm.vcpu.VcpuFd.run` returns instead of the raw kvm_run.

Nobody above the KVM layer reads ``struct kvm_run``. In/MMIO-read exits are answered with
:meth:`VcpuFd.complete_io_in` / :meth:`VcpuFd.complete_mmio_read` before the next run.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple


class IoIn(NamedTuple):
    port: int
    size: int
    count: int  # > 1 for rep ins


class IoOut(NamedTuple):
    port: int
    size: int
    count: int
    data: bytes  # size * count bytes, little-endian values


class MmioRead(NamedTuple):
    addr: int
    size: int


class MmioWrite(NamedTuple):
    addr: int
    size: int
    data: bytes


class Hlt(NamedTuple):
    pass


class Shutdown(NamedTuple):
    """Triple fault (or a shutdown the CPU entered): QEMU treats it as a reset request."""


class Interrupted(NamedTuple):
    """KVM_RUN returned early because a signal arrived or immediate_exit was set."""


class SystemEvent(NamedTuple):
    type: int  # KVM_SYSTEM_EVENT_*
    data: Tuple[int, ...]


class InternalError(NamedTuple):
    suberror: int  # 1 = emulation failure
    data: Tuple[int, ...]


class FailEntry(NamedTuple):
    hardware_reason: int
    cpu: int


class DebugExit(NamedTuple):
    pass


class UnknownExit(NamedTuple):
    reason: int


VcpuExit = (IoIn, IoOut, MmioRead, MmioWrite, Hlt, Shutdown, Interrupted, SystemEvent, InternalError,
            FailEntry, DebugExit, UnknownExit)

INTERNAL_ERROR_NAMES = {
    1: "emulation failure",
    2: "simultaneous exceptions",
    3: "delivery event",
    4: "unexpected exit reason",
}

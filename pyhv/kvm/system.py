"""The /dev/kvm system file descriptor."""

from __future__ import annotations

import errno
import os
from typing import List, Optional

from ..errors import KvmError
from . import ioctls as ic
from . import structs as s
from .syscall import ioctl, ioctl_errno

DEFAULT_KVM_PATH = "/dev/kvm"


class Kvm:
    """An open /dev/kvm. ``Kvm() → create_vm() → VmFd → create_vcpu() → VcpuFd``."""

    def __init__(self, path: str = DEFAULT_KVM_PATH) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as err:
            raise KvmError(f"{path} does not exist: KVM is not available on this host "
                           "(load kvm_intel/kvm_amd, or use -accel tcg)") from err
        except PermissionError as err:
            raise KvmError(f"no permission to open {path}: add yourself to the 'kvm' group "
                           "or use -accel tcg") from err
        except OSError as err:
            raise KvmError(f"cannot open {path}: {err.strerror}") from err
        version = ioctl(self.fd, ic.KVM_GET_API_VERSION, None, "KVM_GET_API_VERSION")
        if version != ic.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmError(f"{path}: KVM API version {version}, pyhv needs {ic.KVM_API_VERSION}")

    def check_extension(self, cap: int) -> int:
        ret = ioctl_errno(self.fd, ic.KVM_CHECK_EXTENSION, cap)
        return max(ret, 0)

    def vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, ic.KVM_GET_VCPU_MMAP_SIZE, None, "KVM_GET_VCPU_MMAP_SIZE")

    def supported_cpuid(self, max_entries: int = 256) -> List[s.kvm_cpuid_entry2]:
        """The CPUID leaves KVM can expose (KVM_GET_SUPPORTED_CPUID)."""
        while True:
            buf = s.cpuid_with_entries(max_entries)
            ret = ioctl_errno(self.fd, ic.KVM_GET_SUPPORTED_CPUID, buf)
            if ret == -errno.E2BIG and max_entries < 4096:
                max_entries *= 2
                continue
            if ret < 0:
                raise KvmError(f"KVM_GET_SUPPORTED_CPUID failed: {os.strerror(-ret)}")
            return [buf.entries[i] for i in range(buf.nent)]

    def msr_index_list(self) -> List[int]:
        probe = s.msr_list_with_entries(0)
        ioctl_errno(self.fd, ic.KVM_GET_MSR_INDEX_LIST, probe)  # E2BIG, fills nmsrs
        buf = s.msr_list_with_entries(probe.nmsrs)
        ioctl(self.fd, ic.KVM_GET_MSR_INDEX_LIST, buf, "KVM_GET_MSR_INDEX_LIST")
        return list(buf.indices)

    def create_vm(self) -> "VmFd":
        from .vm import VmFd

        fd = ioctl(self.fd, ic.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        return VmFd(self, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def kvm_available(path: str = DEFAULT_KVM_PATH) -> Optional[str]:
    """None if /dev/kvm can be opened read-write, else the reason it cannot."""
    if not os.path.exists(path):
        return f"{path} does not exist"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"no read/write permission on {path}"
    return None

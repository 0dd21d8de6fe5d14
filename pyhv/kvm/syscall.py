"""The one place pyhv calls ioctl(2) on KVM file descriptors.

ctypes' libc ``ioctl`` drops the GIL around the system call, so a vCPU thread blocked in an
ioctl never stalls the console or monitor threads. ``KVM_RUN`` alone goes through
``fcntl.ioctl`` (pyhv/kvm/vcpu.py), which also drops the GIL on both runtimes and is cheaper
per call on PyPy; bench/ioctl_call.py measures the two side by side.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from typing import Union

from ..errors import KvmError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ioctl = _libc.ioctl
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]

# The bare libc entry point, for bench/ioctl_call.py.
raw_ioctl = _ioctl

Arg = Union[int, ctypes.Structure, ctypes.Array, None]


def ioctl(fd: int, request: int, arg: Arg = None, what: str = "") -> int:
    """ioctl(fd, request, arg); ``arg`` is an int or a ctypes object passed by reference.

    Raises KvmError naming ``what`` (or the request number) with the errno text.
    """
    if arg is None or isinstance(arg, int):
        ret = _ioctl(fd, request, arg)
    else:
        ret = _ioctl(fd, request, ctypes.addressof(arg))
    if ret < 0:
        err = ctypes.get_errno()
        raise KvmError(f"{what or hex(request)} failed: {os.strerror(err)}") from OSError(err, os.strerror(err))
    return ret


def ioctl_errno(fd: int, request: int, arg: Arg = None) -> int:
    """ioctl returning ``-errno`` instead of raising (for KVM_RUN's EINTR/EAGAIN in the hot loop)."""
    if arg is None or isinstance(arg, int):
        ret = _ioctl(fd, request, arg)
    else:
        ret = _ioctl(fd, request, ctypes.addressof(arg))
    if ret < 0:
        return -ctypes.get_errno()
    return ret


EINTR = errno.EINTR
EAGAIN = errno.EAGAIN

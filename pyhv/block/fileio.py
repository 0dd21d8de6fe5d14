"""Positional file I/O into and out of buffers, on CPython and PyPy alike.

CPython has ``os.preadv``/``os.pwritev``; PyPy 3.9 has neither, nor ``SEEK_DATA``, so the
libc calls are reached through ctypes there. Reading into a caller's memoryview keeps guest
RAM transfers free of intermediate copies.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Optional

_libc = ctypes.CDLL(None, use_errno=True)
_libc.pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_longlong]
_libc.pread.restype = ctypes.c_ssize_t
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
_libc.fallocate.restype = ctypes.c_int
_libc.lseek.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_int]
_libc.lseek.restype = ctypes.c_longlong

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA = 3
SEEK_HOLE = 4

_HAVE_PREADV = hasattr(os, "preadv")


def byte_view(data) -> memoryview:
    """A flat unsigned-byte memoryview of ``data``, cast only when needed: on PyPy a cast
    view is copied element by element (about 60 ms per MiB) wherever it is used."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def pread_into(fd: int, buf: memoryview, offset: int) -> int:
    """Fill ``buf`` from ``offset``; bytes past end of file read as zero. Returns bytes read."""
    total = 0
    length = len(buf)
    while total < length:
        view = buf[total:]
        if _HAVE_PREADV:
            got = os.preadv(fd, [view], offset + total)
        else:
            got = _pread_ctypes(fd, view, offset + total)
        if got == 0:
            view[:] = bytes(len(view))
            break
        total += got
    return total


def _pread_ctypes(fd: int, view: memoryview, offset: int) -> int:
    if view.readonly:
        raise ValueError("pread_into needs a writable buffer")
    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    got = _libc.pread(fd, address, len(view), offset)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return got


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write all of ``data`` (any bytes-like object) at ``offset``."""
    view = byte_view(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """Call fallocate(2); False where the file system does not support ``mode``."""
    if _libc.fallocate(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


def seek_data(fd: int, offset: int, whence: int) -> Optional[int]:
    """lseek with SEEK_DATA/SEEK_HOLE; None when past the last data or unsupported."""
    result = _libc.lseek(fd, offset, whence)
    if result < 0:
        return None
    return result

"""Positional file I/O into and out of buffers, on CPython and PyPy alike.

CPython has ``os.preadv``/``os.pwritev``; PyPy 3.9 has neither, nor ``SEEK_DATA``, so the
libc calls are reached through ctypes there. Reading into a caller's memoryview keeps guest
RAM transfers free of intermediate copies, and a request's scatter-gather list goes to the
kernel in one ``preadv``/``pwritev`` instead of one call per buffer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import List, Optional, Sequence

_libc = ctypes.CDLL(None, use_errno=True)
_libc.pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_longlong]
_libc.pread.restype = ctypes.c_ssize_t
_libc.pwrite.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_longlong]
_libc.pwrite.restype = ctypes.c_ssize_t
_libc.preadv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong]
_libc.preadv.restype = ctypes.c_ssize_t
_libc.pwritev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong]
_libc.pwritev.restype = ctypes.c_ssize_t
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
# Linux's UIO_MAXIOV: a longer vector is refused with EINVAL, so it goes in several calls.
IOV_MAX = 1024


# PyPy's os.pwrite copies its argument first: 0.7 µs for 4 KiB where a ctypes call costs
# 1.6 µs, but 100-490 µs for 1 MiB against 75 µs (measured on the development machine).
_PYPY_COPY_LIMIT = 64 * 1024
_IOVEC = struct.Struct("@PN")  # struct iovec: void *iov_base; size_t iov_len


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
    if not _HAVE_PREADV and not view.readonly and len(view) >= _PYPY_COPY_LIMIT:
        pwritev_all(fd, [view], offset)
        return
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


def _advance(views: List[memoryview], count: int) -> List[memoryview]:
    """What is left of ``views`` once their first ``count`` bytes have been transferred."""
    index = 0
    while index < len(views) and count >= len(views[index]):
        count -= len(views[index])
        index += 1
    rest = views[index:]
    if rest and count:
        rest[0] = rest[0][count:]
    return rest


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _libc_io(write: bool, fd: int, views: Sequence[memoryview], offset: int) -> int:
    """pread/pwrite for one buffer, preadv/pwritev for several, through ctypes.

    The iovec table is packed with struct into a bytearray: on PyPy, filling a ctypes
    Structure array costs about 5 µs a call, more than a 4 KiB copy."""
    if len(views) == 1:
        function = _libc.pwrite if write else _libc.pread
        done = function(fd, _address(views[0]), len(views[0]), offset)
    else:
        table = bytearray(_IOVEC.size * len(views))
        for index, view in enumerate(views):
            _IOVEC.pack_into(table, _IOVEC.size * index, _address(view), len(view))
        function = _libc.pwritev if write else _libc.preadv
        done = function(fd, _address(memoryview(table)), len(views), offset)
    if done < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return done


def _vector_io(write: bool, fd: int, batch: List[memoryview], offset: int) -> int:
    """One preadv/pwritev of at most IOV_MAX buffers (through libc where os lacks them)."""
    if _HAVE_PREADV:
        return (os.pwritev if write else os.preadv)(fd, batch, offset)
    return _libc_io(write, fd, batch, offset)


def preadv_into(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
    """Fill ``buffers`` in order from ``offset``; bytes past end of file read as zero.

    The buffers must be writable flat byte views. Returns the bytes read from the file."""
    total = 0
    if _HAVE_PREADV and len(buffers) <= IOV_MAX:
        # One call fills the whole list unless it crosses the end of the file.
        total = os.preadv(fd, buffers, offset)
        if total == sum(map(len, buffers)):
            return total
    pending = _advance([view for view in buffers if len(view)], total)
    while pending:
        got = _vector_io(False, fd, pending[:IOV_MAX], offset + total)
        if got == 0:
            for view in pending:
                view[:] = bytes(len(view))
            break
        total += got
        pending = _advance(pending, got)
    return total


def pwritev_all(fd: int, buffers: Sequence[memoryview], offset: int) -> None:
    """Write ``buffers`` (flat byte views) in order at ``offset``, all of them."""
    if _HAVE_PREADV and len(buffers) <= IOV_MAX:
        done = os.pwritev(fd, buffers, offset)
        if done == sum(map(len, buffers)):
            return
        pending = _advance(list(buffers), done)
        offset += done
    else:
        pending = [view for view in buffers if len(view)]
    if not _HAVE_PREADV and (any(view.readonly for view in pending)
                             or sum(map(len, pending)) < _PYPY_COPY_LIMIT):
        # ctypes takes the address of writable buffers only (bytes objects in tools); and
        # a short write is cheaper copied by os.pwrite than handed over through ctypes.
        for view in pending:
            pwrite_all(fd, view, offset)
            offset += len(view)
        return
    done = 0
    while pending:
        wrote = _vector_io(True, fd, pending[:IOV_MAX], offset + done)
        if not wrote:  # a regular file never does this; a loop must not spin on it either
            raise OSError(errno.EIO, f"pwritev at {offset + done:#x} wrote nothing")
        done += wrote
        pending = _advance(pending, wrote)

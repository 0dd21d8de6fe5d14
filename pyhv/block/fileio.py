"""Positional file I/O into and out of buffers, on CPython and PyPy alike.

CPython has ``os.preadv``/``os.pwritev``; PyPy 3.9 has neither, nor ``SEEK_DATA``, so there
the libc calls are made through cffi, which PyPy ships and its JIT turns into direct calls
(through ctypes the same call spent 2-4 µs in PyPy's ``_ctypes``, more than a 4 KiB copy).
Reading into a caller's memoryview keeps guest RAM transfers free of intermediate copies,
and a request's scatter-gather list goes to the kernel in one ``preadv``/``pwritev``
instead of one call per buffer.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import List, Optional, Sequence

_HAVE_PREADV = hasattr(os, "preadv")

# fallocate and lseek are rare (discard, write-zeroes, sparse copies): ctypes on both runtimes.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
_libc.fallocate.restype = ctypes.c_int
_libc.lseek.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_int]
_libc.lseek.restype = ctypes.c_longlong

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA = 3
SEEK_HOLE = 4

# Linux's UIO_MAXIOV: a longer vector is refused with EINVAL, so it goes in several calls.
IOV_MAX = 1024

_LIBC_IO_DECLARATIONS = """
    struct iovec { void *iov_base; size_t iov_len; };
    ssize_t pread(int fd, void *buf, size_t count, int64_t offset);
    ssize_t pwrite(int fd, const void *buf, size_t count, int64_t offset);
    ssize_t preadv(int fd, const struct iovec *iov, int iovcnt, int64_t offset);
    ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, int64_t offset);
"""


class _LibcIo:
    """pread/pwrite/preadv/pwritev through cffi, for runtimes whose os module lacks them."""

    def __init__(self) -> None:
        import cffi  # part of PyPy; on CPython only the tests use this class

        self.ffi = cffi.FFI()
        self.ffi.cdef(_LIBC_IO_DECLARATIONS)
        self.lib = self.ffi.dlopen(None)

    def transfer(self, write: bool, fd: int, views: Sequence[memoryview], offset: int) -> int:
        """One call moving bytes between ``fd`` at ``offset`` and ``views`` (a read needs
        writable ones); the bytes moved."""
        ffi, lib = self.ffi, self.lib
        if len(views) == 1:
            view = views[0]
            buffer = ffi.from_buffer(view, require_writable=not write)
            done = (lib.pwrite if write else lib.pread)(fd, buffer, len(view), offset)
        else:
            table = ffi.new("struct iovec[]", len(views))
            buffers = []  # each from_buffer pins its buffer until the call is over
            for index, view in enumerate(views):
                buffer = ffi.from_buffer(view, require_writable=not write)
                buffers.append(buffer)
                table[index].iov_base = buffer
                table[index].iov_len = len(view)
            done = (lib.pwritev if write else lib.preadv)(fd, table, len(views), offset)
        if done < 0:
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        return done


_libc_io: Optional[_LibcIo] = None if _HAVE_PREADV else _LibcIo()


def byte_view(data) -> memoryview:
    """A flat unsigned-byte memoryview of ``data``, cast only when needed: on PyPy a cast
    view is copied element by element (about 60 ms per MiB) wherever it is used."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _vector_io(write: bool, fd: int, batch: Sequence[memoryview], offset: int) -> int:
    """One preadv/pwritev (pread/pwrite for one buffer) of at most IOV_MAX buffers."""
    if _libc_io is not None:
        return _libc_io.transfer(write, fd, batch, offset)
    return (os.pwritev if write else os.preadv)(fd, batch, offset)


def pread_into(fd: int, buf: memoryview, offset: int) -> int:
    """Fill ``buf`` from ``offset``; bytes past end of file read as zero. Returns bytes read."""
    return preadv_into(fd, [buf], offset)


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write all of ``data`` (any bytes-like object) at ``offset``."""
    pwritev_all(fd, [byte_view(data)], offset)


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


def preadv_into(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
    """Fill ``buffers`` in order from ``offset``; bytes past end of file read as zero.

    The buffers must be writable flat byte views. Returns the bytes read from the file."""
    total = 0
    if len(buffers) <= IOV_MAX:
        # One call fills the whole list unless it crosses the end of the file.
        total = _vector_io(False, fd, buffers, offset)
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
    done = 0
    if len(buffers) <= IOV_MAX:
        done = _vector_io(True, fd, buffers, offset)
        if done == sum(map(len, buffers)):
            return
    pending = _advance([view for view in buffers if len(view)], done)
    while pending:
        wrote = _vector_io(True, fd, pending[:IOV_MAX], offset + done)
        if not wrote:  # a regular file never does this; a loop must not spin on it either
            raise OSError(errno.EIO, f"pwritev at {offset + done:#x} wrote nothing")
        done += wrote
        pending = _advance(pending, wrote)

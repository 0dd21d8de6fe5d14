"""Raw images: the virtual disk is the file, byte for byte.

Holes are the zero ranges: ``discard`` punches them and ``write_zeroes`` uses
FALLOC_FL_ZERO_RANGE where the file system has it, writing zeros only as a fallback.
"""

from __future__ import annotations

import os
from typing import List, Sequence

from . import fileio
from .backend import BlockBackend, Extent
from .errors import BlockError

_ZERO_CHUNK = 1 << 20


class RawImage(BlockBackend):
    format_name = "raw"
    thread_safe = True  # pread/pwrite at explicit offsets share no file position

    def __init__(self, path: str, read_only: bool = False) -> None:
        flags = os.O_RDONLY if read_only else os.O_RDWR
        try:
            self._fd = os.open(path, flags | os.O_CLOEXEC)
        except OSError as err:
            raise BlockError(f"could not open '{path}': {err.strerror}") from err
        super().__init__(path, os.fstat(self._fd).st_size, read_only)

    def readinto(self, offset: int, buf: memoryview) -> None:
        self._check_request(offset, len(buf), False)
        fileio.pread_into(self._fd, buf, offset)

    def write(self, offset: int, data) -> None:
        length = memoryview(data).nbytes
        self._check_request(offset, length, True)
        fileio.pwrite_all(self._fd, data, offset)

    def readv(self, offset: int, buffers: Sequence[memoryview]) -> None:
        self._check_request(offset, sum(map(len, buffers)), False)
        fileio.preadv_into(self._fd, buffers, offset)

    def writev(self, offset: int, buffers: Sequence[memoryview]) -> None:
        self._check_request(offset, sum(map(len, buffers)), True)
        fileio.pwritev_all(self._fd, buffers, offset)

    def flush(self) -> None:
        if not self.read_only:
            os.fdatasync(self._fd)

    def discard(self, offset: int, length: int) -> None:
        self._check_request(offset, length, True)
        if length:
            fileio.fallocate(self._fd, fileio.FALLOC_FL_PUNCH_HOLE | fileio.FALLOC_FL_KEEP_SIZE,
                             offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check_request(offset, length, True)
        if not length:
            return
        if fileio.fallocate(self._fd, fileio.FALLOC_FL_PUNCH_HOLE | fileio.FALLOC_FL_KEEP_SIZE,
                            offset, length):
            return
        if fileio.fallocate(self._fd, fileio.FALLOC_FL_ZERO_RANGE, offset, length):
            return
        zeros = bytes(min(length, _ZERO_CHUNK))
        end = offset + length
        while offset < end:
            chunk = min(end - offset, len(zeros))
            fileio.pwrite_all(self._fd, memoryview(zeros)[:chunk], offset)
            offset += chunk

    def block_status(self, offset: int, length: int) -> List[Extent]:
        self._check_request(offset, length, False)
        extents: List[Extent] = []
        end = offset + length
        pos = offset
        while pos < end:
            data_start = fileio.seek_data(self._fd, pos, fileio.SEEK_DATA)
            if data_start is None or data_start >= end:
                extents.append(Extent(pos, end - pos, False, True, 0, True, None, self.filename))
                break
            if data_start > pos:
                extents.append(Extent(pos, data_start - pos, False, True, 0, True, None, self.filename))
            hole = fileio.seek_data(self._fd, data_start, fileio.SEEK_HOLE)
            data_end = min(end, hole if hole is not None else end)
            extents.append(Extent(data_start, data_end - data_start, True, False, 0, True, data_start,
                                  self.filename))
            pos = data_end
        return extents

    def truncate(self, new_size: int) -> None:
        if self.read_only:
            raise BlockError(f"{self.filename}: image is opened read-only")
        os.ftruncate(self._fd, new_size)
        self.size = new_size

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1

"""The block-backend interface every disk format implements, and image opening.

A backend is a flat, byte-addressed virtual disk of ``size`` bytes. Devices (virtio-blk)
call ``readv``/``writev`` with memoryviews into guest RAM so no copy is made on the way;
tools (``pyhv img``) use ``read``/``write`` and ``block_status``. Like QEMU, probing a
file as raw when it was not asked for is refused for writable opens: a guest could write
a qcow2 header into a raw disk and have it reinterpreted on the next boot.
"""

from __future__ import annotations

import abc
import os
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

from .errors import BlockError, BlockOptionError, BlockRequestError, ImageFormatError

QCOW2_MAGIC = b"QFI\xfb"
FORMATS = ("raw", "qcow2")
MAX_BACKING_DEPTH = 32


class Extent(NamedTuple):
    """A run of the virtual disk with one allocation state, as ``qemu-img map`` shows it."""

    start: int
    length: int
    data: bool  # reads come from stored data (not known zeros)
    zero: bool  # reads return zeros
    depth: int  # 0: this image; 1: its backing file; ...
    present: bool  # allocated in some layer of the chain (False: falls off the end)
    host_offset: Optional[int]  # where the data lies in ``filename``, if uncompressed
    filename: str
    compressed: bool = False


class BlockBackend(abc.ABC):
    """A virtual disk; offsets and lengths are in bytes and must stay inside ``size``."""

    format_name = ""
    # True where requests may run on several threads at once (positional I/O on one fd and
    # no shared metadata, as raw); a device then serves large requests from a worker pool.
    thread_safe = False

    def __init__(self, filename: str, size: int, read_only: bool) -> None:
        self.filename = filename
        self.size = size
        self.read_only = read_only

    # ----- requests -----
    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, memoryview(buf))
        return bytes(buf)

    def readv(self, offset: int, buffers: Sequence[memoryview]) -> None:
        """Scatter the bytes at ``offset`` into ``buffers`` in order."""
        for buf in buffers:
            self.readinto(offset, buf)
            offset += len(buf)

    def writev(self, offset: int, buffers: Sequence[memoryview]) -> None:
        """Gather ``buffers`` in order and write them at ``offset``."""
        for buf in buffers:
            self.write(offset, buf)
            offset += len(buf)

    @abc.abstractmethod
    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the disk bytes at ``offset``."""

    @abc.abstractmethod
    def write(self, offset: int, data) -> None:
        """Write the bytes-like ``data`` at ``offset``."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every completed write durable."""

    @abc.abstractmethod
    def discard(self, offset: int, length: int) -> None:
        """Hint that the range is unused; its contents become unspecified (zeros or backing)."""

    @abc.abstractmethod
    def write_zeroes(self, offset: int, length: int) -> None:
        """Make the range read as zeros, without writing zeros where the format can avoid it."""

    @abc.abstractmethod
    def block_status(self, offset: int, length: int) -> List[Extent]:
        """Allocation state of ``[offset, offset+length)`` as consecutive extents."""

    @abc.abstractmethod
    def truncate(self, new_size: int) -> None:
        """Change the virtual size (grow, or shrink dropping the data past the end)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release the file."""

    def allocated_file_size(self) -> int:
        """Bytes the image occupies on the host file system (qemu-img's disk size)."""
        return os.stat(self.filename).st_blocks * 512

    def backing_chain(self) -> List["BlockBackend"]:
        """This image followed by its backing files, nearest first."""
        return [self]

    # ----- helpers for subclasses -----
    def _check_request(self, offset: int, length: int, write: bool) -> None:
        if write and self.read_only:
            raise BlockRequestError(f"{self.filename}: image is opened read-only")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise BlockRequestError(
                f"{self.filename}: request {offset:#x}+{length:#x} is outside the "
                f"disk of {self.size:#x} bytes")

    def __enter__(self) -> "BlockBackend":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def probe_format(path: str) -> str:
    """Guess a file's format from its first bytes: qcow2 by magic, raw otherwise."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise BlockError(f"could not open '{path}': {err.strerror}") from err
    return "qcow2" if magic == QCOW2_MAGIC else "raw"


def open_image(path: str, format: Optional[str] = None, read_only: bool = False,
               _chain: Tuple[str, ...] = ()) -> BlockBackend:
    """Open a disk image; ``format`` given wins, otherwise it is probed.

    A writable open of a file that probes as raw is refused: the guest could plant a
    qcow2 header in it and take over host files through a backing path on the next open.
    """
    if format is not None and format not in FORMATS:
        raise BlockOptionError(f"unknown image format '{format}' (known: {', '.join(FORMATS)})")
    real = os.path.realpath(path)
    if real in _chain:
        raise ImageFormatError(
            f"backing chain of '{_chain[0]}' is cyclic: '{path}' appears twice")
    if len(_chain) > MAX_BACKING_DEPTH:
        raise ImageFormatError(
            f"backing chain of '{_chain[0]}' is deeper than {MAX_BACKING_DEPTH} images")
    if not os.path.exists(path):
        raise BlockError(f"could not open '{path}': No such file or directory")
    if format is None:
        format = probe_format(path)
        if format == "raw" and not read_only:
            raise BlockOptionError(
                f"'{path}' was probed as raw; give the format explicitly (-f raw or "
                "format=raw) to write to it")
    chain = _chain + (real,)
    if format == "raw":
        from .raw import RawImage
        return RawImage(path, read_only)
    from .qcow2.image import Qcow2Image
    return Qcow2Image(path, read_only, chain)

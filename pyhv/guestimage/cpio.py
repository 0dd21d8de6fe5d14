"""A writer for cpio "newc" archives, the format of a Linux initramfs.

The kernel's initramfs unpacker (init/initramfs.c) reads the "newc" format: a 110-byte ASCII
header of hexadecimal fields, the NUL-terminated name padded to 4 bytes, then the data padded to
4 bytes, and a final ``TRAILER!!!`` entry. Output is deterministic: fixed mtimes, owner 0:0,
inode numbers given in order of addition, entries in the order they were added; so the same
inputs always give the same bytes and the archive can be cached by a hash of its inputs.

Every entry has nlink 1 except directories (2): the kernel treats a non-directory with
nlink >= 2 as a hard-link candidate keyed by its inode number, which we never want.
"""

from __future__ import annotations

import gzip
import stat
from typing import Dict, List, Optional

from pyhv.errors import BootError

NEWC_MAGIC = b"070701"
TRAILER_NAME = "TRAILER!!!"
HEADER_SIZE = 110
# Header fields after the magic, each 8 hexadecimal digits, in on-disk order.
HEADER_FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)
MAX_FIELD = 0xFFFFFFFF


class CpioError(BootError):
    """An entry cannot be placed in a cpio archive (bad path, duplicate, oversized)."""


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _normalize(path: str) -> str:
    """Turn ``/bin/sh`` or ``bin/sh`` into the archive name ``bin/sh``; refuse escapes."""
    name = path.strip("/")
    parts = name.split("/")
    if not name or any(part in ("", ".", "..") for part in parts):
        raise CpioError(f"cpio entry {path!r}: path must name a file below the root, without '.', '..' or '//'")
    if "\0" in name:
        raise CpioError(f"cpio entry {path!r}: path contains a NUL byte")
    return name


class CpioWriter:
    """Collects entries and renders one newc archive.

    Missing parent directories are added automatically (mode 0755) so that the kernel, which
    creates entries in archive order, always finds the parent of each entry.
    """

    def __init__(self, mtime: int = 0) -> None:
        if not 0 <= mtime <= MAX_FIELD:
            raise CpioError(f"cpio mtime {mtime} does not fit the 32-bit newc field")
        self._mtime = mtime
        self._chunks: List[bytes] = []
        self._kinds: Dict[str, int] = {}
        self._next_ino = 1
        self._finished = False

    # -- public entry points ------------------------------------------------------------

    def add_directory(self, path: str, mode: int = 0o755) -> None:
        name = _normalize(path)
        if self._kinds.get(name) == stat.S_IFDIR:
            return
        self._add(name, stat.S_IFDIR | (mode & 0o7777), b"", nlink=2)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(_normalize(path), stat.S_IFREG | (mode & 0o7777), bytes(data))

    def add_symlink(self, path: str, target: str) -> None:
        if not target or "\0" in target:
            raise CpioError(f"cpio symlink {path!r}: target {target!r} is empty or contains NUL")
        self._add(_normalize(path), stat.S_IFLNK | 0o777, target.encode())

    def add_device(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a device node; ``kind`` is ``"c"`` (character) or ``"b"`` (block)."""
        type_bits = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}.get(kind)
        if type_bits is None:
            raise CpioError(f"cpio device {path!r}: kind {kind!r} is neither 'c' nor 'b'")
        self._add(_normalize(path), type_bits | (mode & 0o7777), b"", rdev=(major, minor))

    def names(self) -> List[str]:
        """The archive names added so far, in archive order."""
        return list(self._kinds)

    def finish(self) -> bytes:
        """Append the trailer and return the archive; the writer accepts nothing afterwards."""
        if not self._finished:
            self._chunks.append(self._entry(TRAILER_NAME, 0, b"", ino=0, nlink=1, rdev=(0, 0)))
            self._finished = True
        return b"".join(self._chunks)

    # -- internals ----------------------------------------------------------------------

    def _add(self, name: str, mode: int, data: bytes, nlink: int = 1, rdev: tuple = (0, 0)) -> None:
        if self._finished:
            raise CpioError(f"cpio entry {name!r}: archive already finished")
        if name in self._kinds:
            raise CpioError(f"cpio entry {name!r}: added twice")
        if name == TRAILER_NAME:
            raise CpioError(f"cpio entry {name!r}: reserved for the archive trailer")
        if len(data) > MAX_FIELD:
            raise CpioError(f"cpio entry {name!r}: {len(data)} bytes exceed the 4 GiB newc limit")
        for value in rdev:
            if not 0 <= value <= MAX_FIELD:
                raise CpioError(f"cpio entry {name!r}: device number {value} out of range")
        parent, _, _ = name.rpartition("/")
        if parent:
            parent_kind = self._kinds.get(parent)
            if parent_kind is None:
                self.add_directory(parent)
            elif parent_kind != stat.S_IFDIR:
                raise CpioError(f"cpio entry {name!r}: parent {parent!r} is not a directory")
        self._kinds[name] = stat.S_IFMT(mode)
        self._chunks.append(self._entry(name, mode, data, ino=self._next_ino, nlink=nlink, rdev=rdev))
        self._next_ino += 1

    def _entry(self, name: str, mode: int, data: bytes, ino: int, nlink: int, rdev: tuple) -> bytes:
        encoded_name = name.encode() + b"\0"
        values = {
            "ino": ino, "mode": mode, "uid": 0, "gid": 0, "nlink": nlink,
            "mtime": self._mtime if name != TRAILER_NAME else 0, "filesize": len(data),
            "devmajor": 0, "devminor": 0, "rdevmajor": rdev[0], "rdevminor": rdev[1],
            "namesize": len(encoded_name), "check": 0,
        }
        header = NEWC_MAGIC + b"".join(b"%08X" % values[field] for field in HEADER_FIELDS)
        head = header + encoded_name
        return head + _pad4(len(head)) + data + _pad4(len(data))


def compress(archive: bytes, method: Optional[str]) -> bytes:
    """Return ``archive`` as is (``None``) or gzip-compressed with a zero mtime (``"gzip"``)."""
    if method is None:
        return archive
    if method == "gzip":
        return gzip.compress(archive, compresslevel=9, mtime=0)
    raise CpioError(f"initramfs compression {method!r} is not supported (use None or 'gzip')")

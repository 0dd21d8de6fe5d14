"""The compiled code of translated blocks, kept from one boot of a guest to the next.

Translating a block generates Python source and compiles it. The compile is the larger part:
about 1.1 ms of 2 ms a block on CPython, where the Debian boot translates 12,900 blocks, 1 ms
on PyPy, which translates 1,100. A second boot of the same kernel generates the same sources, so
when a VM ends the accelerator writes the code objects of this boot's sources (``marshal``, as
Python's own ``__pycache__`` does) beside the hot-block hints, and the next boot loads a code
object where it would have compiled the same source again (about 0.015 ms).

An entry is named by a hash of the source and the file name it was compiled under, so it can
only stand for that exact text: a changed translator or kernel generates other text and misses.
The file is a cache: one written by another Python (its bytecode differs), a damaged one (zlib's
checksum), or an unreadable one is ignored with a warning, and a failed write only costs the
next boot its compiles. Like ``__pycache__`` it trusts its directory: ``marshal`` is not meant
for data from elsewhere, and the directory is the user's own cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import marshal
import os
import re
import sys
import zlib
from pathlib import Path
from types import CodeType
from typing import Dict, Optional, Tuple

from ...cache import prune_oldest, replace_cache_file
from .compiler import compile_block

log = logging.getLogger("pyhv.accel.tcg.codecache")

# 2: entries named by the source before its dead flag locals are pruned (see .flagprune).
FORMAT_VERSION = 2
# File header: what wrote it (this format, the bytecode's magic number), so another Python's
# file reads as a miss, never as code.
_MAGIC = b"pyhv-tcg-code\0"
# The code objects kept in a file, this boot's first: the Debian boot's take 62 MB on CPython
# (12,900 blocks, 4.8 KB each; a 13 MB file) and under 1 MB on PyPy, which translates fewer.
MAX_BYTES = 192 << 20
# A file is rewritten when a boot compiled at least this many blocks it lacks: rewriting the
# Debian boot's file takes about a second, compiling 64 blocks again at the next boot 0.07 s,
# and every boot meets a few blocks the last one did not.
SAVE_MIN_NEW = 64
# Code files kept in a directory (one per kernel path and Python): the oldest beyond this go.
MAX_FILES = 8
CODE_FILE_NAME = re.compile(r"[0-9a-f]{16}\.[\w.-]+\.code")


def code_cache_path(hints_path: Path) -> Path:
    """Where the code of guests whose hints live at ``hints_path`` is kept, for this Python."""
    tag = sys.implementation.cache_tag or sys.implementation.name
    return Path(hints_path).with_suffix(f".{tag}.code")


def _header() -> bytes:
    return _MAGIC + bytes([FORMAT_VERSION]) + importlib.util.MAGIC_NUMBER


def _entry_key(source: str, filename: str) -> bytes:
    return hashlib.sha256(filename.encode() + b"\0" + source.encode()).digest()[:16]


class CodeCache:
    """The code objects read from ``path`` at start-up, and those this boot compiles; :meth:`save`
    writes the ones this boot used or made first, then the older ones, up to MAX_BYTES."""

    def __init__(self, path: Optional[Path]) -> None:
        """``path`` None: a cache of this boot's code only, never saved (the compile helper's
        where there is no file to read)."""
        self.path = Path(path) if path is not None else None
        self.previous: Dict[bytes, bytes] = _load(self.path) if self.path is not None else {}
        self.used: Dict[bytes, bytes] = {}
        self.hits = 0
        self.compiled = 0
        self._unsaved = 0  # blocks compiled that the file lacks

    def compile(self, source: str, filename: str) -> CodeType:
        """:func:`compile_block`, from the cache when an earlier boot compiled it."""
        code = self.lookup(source, filename)
        if code is None:
            code = compile_block(source, filename)
            self.add(source, filename, code)
        return code

    def lookup(self, source: str, filename: str) -> Optional[CodeType]:
        """The code an earlier boot (or this one) compiled from ``source``, if kept."""
        return self._find(_entry_key(source, filename), filename)

    def _find(self, key: bytes, filename: str) -> Optional[CodeType]:
        """:meth:`lookup` by the entry's key: a kept blob that loads as ``filename``'s code."""
        blob = self.used.get(key) or self.previous.get(key)
        if blob is None:
            return None
        try:
            code = marshal.loads(blob)
        except (EOFError, ValueError, TypeError):
            return None
        if not isinstance(code, CodeType) or code.co_filename != filename:
            return None
        self.used[key] = blob
        self.hits += 1
        return code

    def entry(self, source: str, filename: str) -> Tuple[bytes, bytes, bool]:
        """(key, marshalled code, new) for ``source``: kept, else compiled and kept. How the
        compile helper uses its read-only copy of the cache (the vCPU keeps it with :meth:`keep`)."""
        key = _entry_key(source, filename)
        if self._find(key, filename) is not None:  # a blob that loads as the block's code
            return key, self.used[key], False
        blob = marshal.dumps(compile_block(source, filename))
        self.keep(key, blob, True)
        return key, blob, True

    def keep(self, key: bytes, blob: bytes, new: bool) -> None:
        """Keep an entry the compile helper made or found (see :meth:`entry`), as
        :meth:`compile` keeps what it compiles or finds."""
        self.used[key] = blob
        if new:
            self.compiled += 1
            self._unsaved += 1
        else:
            self.hits += 1

    def add(self, source: str, filename: str, code: CodeType) -> None:
        """Keep ``code``, compiled from ``source`` in this boot, for the next."""
        self.keep(_entry_key(source, filename), marshal.dumps(code), True)

    def save(self) -> None:
        """Write this boot's entries, then the earlier ones it did not use, atomically."""
        if self.path is None or not self._unsaved or (self.previous and self._unsaved < SAVE_MIN_NEW):
            return  # the file holds (nearly) all of this boot's code already
        merged: Dict[bytes, bytes] = {}
        size = 0
        for entries in (self.used, self.previous):
            for key, blob in entries.items():
                if key in merged:
                    continue
                size += len(blob)
                if size > MAX_BYTES:
                    break
                merged[key] = blob
        try:
            replace_cache_file(self.path, _header() + zlib.compress(marshal.dumps(merged), 1))
        except OSError as err:
            log.warning("cannot save the software CPU's translated code to %s (%s); the next "
                        "boot compiles it again", self.path, err)
            return
        prune_oldest(self.path.parent, "*.code", CODE_FILE_NAME, MAX_FILES)
        self.previous, self._unsaved = merged, 0


def _load(path: Path) -> Dict[bytes, bytes]:
    header = _header()
    try:
        with open(path, "rb") as stream:
            if os.fstat(stream.fileno()).st_size > MAX_BYTES:
                log.warning("ignoring the translated code in %s: larger than a code file grows", path)
                return {}
            data = stream.read()
    except FileNotFoundError:
        return {}
    except OSError as err:
        log.warning("ignoring the translated code in %s (%s)", path, err)
        return {}
    if not data.startswith(header):
        log.warning("ignoring the translated code in %s: written by another Python or "
                    "another pyhv (format %d)", path, FORMAT_VERSION)
        return {}
    try:
        decompressor = zlib.decompressobj()
        raw = decompressor.decompress(data[len(header):], MAX_BYTES + (1 << 20))
        if decompressor.unconsumed_tail or not decompressor.eof:
            raise ValueError("truncated, or larger than a code file grows")
        entries = marshal.loads(raw)
    except (zlib.error, ValueError, EOFError, TypeError) as err:
        log.warning("ignoring the translated code in %s (%s)", path, err)
        return {}
    if not isinstance(entries, dict) or not all(
            isinstance(key, bytes) and isinstance(blob, bytes) for key, blob in entries.items()):
        log.warning("ignoring the translated code in %s: not a code file", path)
        return {}
    return entries

"""Hot-block hints: the blocks one boot translated, so that the next boot of the same guest
translates them after a few runs instead of thousands.

A block is translated only after TRANSLATE_AFTER interpreted runs (see .cpu): translating and
compiling one costs about as much as interpreting it that often, and most blocks never get
that hot. The blocks that do are the same from one boot of a kernel to the next, and their
warm-up takes about a fifth of a Debian boot on PyPy (58 million of its 457 million
instructions, each interpreted at about four times the cost of translated code). So when a
boot ends the accelerator writes down which blocks it translated (HOT) and which ran often
enough to join a translated block's region (PART, see Cpu._region); the next boot of the same
kernel reads that back, and a block it decodes that has a hint starts with the heat it had
then. A boot with no hints file yet looks nothing up (Cpu._build_block).

A hint changes when a block is translated, never what runs: a block is named by its RIP, its
mode and a CRC of its instruction bytes, so code that changed (a rebuilt kernel, a module
loaded elsewhere, text patched differently) finds no hint and warms up as before. The file is
a cache: a damaged or unreadable one is ignored with a warning, and a failed write only costs
the next boot its head start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Dict, Iterable, Optional

from ...cache import prune_oldest, replace_cache_file

log = logging.getLogger("pyhv.accel.tcg.hints")

HOT = "hot"  # translated: the next boot translates it after WARM_RUNS runs
PART = "part"  # part of a translated region: the next boot lets it join one at once
KINDS = (HOT, PART)
# Runs before a hinted block is translated: enough for the blocks of its loops to be decoded
# (and hinted) by then, so its region takes them in as the first boot's did.
WARM_RUNS = 64
# Entries kept in a file; this boot's come first. The Debian boot notes about 4,000.
MAX_ENTRIES = 200_000
# Hints files kept in a directory (one per kernel path): the oldest beyond this are removed.
MAX_FILES = 64
# A file larger than this is not one pyhv wrote (MAX_ENTRIES entries take about 8 MB).
MAX_FILE_BYTES = 32 << 20
FORMAT_VERSION = 1
# What a hints file is called (hints_file_name): 16 hex digits of a hash of the kernel's path.
HINTS_FILE_NAME = re.compile(r"[0-9a-f]{16}\.json")


def hints_file_name(kernel: Path) -> str:
    """The name of the hints file of guests booted from ``kernel``: a hash of its real path."""
    return hashlib.sha256(os.fsencode(os.path.realpath(kernel))).hexdigest()[:16] + ".json"


def block_key(rip: int, bits: int, code: Iterable[bytes]) -> str:
    """A block's name in the hints: its RIP, its mode, and a CRC-32 of its instruction bytes."""
    crc = 0
    for piece in code:
        crc = zlib.crc32(piece, crc)
    return f"{rip & 0xFFFF_FFFF_FFFF_FFFF:x}/{bits}/{crc:08x}"


class BlockHints:
    """The hints read from ``path`` at start-up, and those this boot adds, written by :meth:`save`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.previous: Dict[str, str] = _load(self.path)
        self.loaded = len(self.previous)
        self.noted: Dict[str, str] = {}

    def kind(self, key: str) -> Optional[str]:
        """HOT, PART or None: what an earlier boot saw of the block named ``key``."""
        return self.previous.get(key)

    def note(self, key: str, kind: str) -> None:
        """Record that this boot translated the block (HOT) or took it into a region (PART)."""
        if kind == HOT or self.noted.get(key) != HOT:
            self.noted[key] = kind

    def save(self) -> None:
        """Write this boot's hints, then the earlier ones it did not meet, atomically."""
        merged = dict(self.noted)
        for key, kind in self.previous.items():
            if len(merged) >= MAX_ENTRIES:
                break
            merged.setdefault(key, kind)
        if merged == self.previous:
            return
        try:
            document = json.dumps({"version": FORMAT_VERSION, "blocks": merged}, separators=(",", ":"))
            replace_cache_file(self.path, document.encode())
        except OSError as err:
            log.warning("cannot save the software CPU's block hints to %s (%s); the next boot "
                        "warms up without them", self.path, err)
            return
        prune_oldest(self.path.parent, "*.json", HINTS_FILE_NAME, MAX_FILES)
        self.previous = merged


def _load(path: Path) -> Dict[str, str]:
    try:
        with open(path) as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_FILE_BYTES:
                log.warning("ignoring the block hints in %s: %d bytes, more than a hints file holds", path, size)
                return {}
            data = json.load(stream)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("ignoring the block hints in %s (%s)", path, err)
        return {}
    blocks = data.get("blocks") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or data.get("version") != FORMAT_VERSION
            or not isinstance(blocks, dict) or len(blocks) > MAX_ENTRIES
            or not all(isinstance(key, str) and kind in KINDS for key, kind in blocks.items())):
        log.warning("ignoring the block hints in %s: not a version %d hints file", path, FORMAT_VERSION)
        return {}
    return blocks


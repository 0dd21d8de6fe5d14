"""Fixtures for the kernel-loader tests: guest memory and the real Debian cloud kernel."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # boot_images helper

from pyhv.memory import GuestMemory  # noqa: E402

MiB = 1 << 20


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory(256 * MiB)
    yield mem
    mem.close()


def _from_guestimage() -> Optional[Path]:
    try:
        from pyhv.guestimage.debian import fetch_kernel
    except ImportError:
        return None
    try:
        entry = Path(fetch_kernel())
    except Exception:  # no apt, no network: fall back to what is already on disk
        return None
    candidate = entry / "vmlinuz" if entry.is_dir() else entry
    return candidate if candidate.is_file() else None


def _newest(paths: List[Path]) -> Optional[Path]:
    files = [p for p in paths if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


@pytest.fixture(scope="session")
def debian_kernel() -> Path:
    """A Debian cloud kernel bzImage: fetched by pyhv.guestimage.debian, or found on disk."""
    found = _from_guestimage()
    if found is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyhv"
        found = _newest(list(Path("/boot").glob("vmlinuz-*")) + list(cache.rglob("vmlinuz*")))
    if found is None:
        pytest.skip("no Debian kernel: pyhv.guestimage.debian.fetch_kernel failed and none in /boot or ~/.cache/pyhv")
    return found

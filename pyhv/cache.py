"""Where pyhv keeps what it can rebuild: downloaded guest packages, built initramfs images,
the software CPU's hot-block hints."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pyhv``, or ``~/.cache/pyhv``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyhv"

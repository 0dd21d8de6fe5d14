"""Where pyhv keeps what it can rebuild: downloaded guest packages, built initramfs images,
the software CPU's hot-block hints and translated code; and how it writes and prunes there."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pyhv``, or ``~/.cache/pyhv``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyhv"


def replace_cache_file(path: Path, data: bytes) -> None:
    """Make ``path`` hold ``data``: written to a scratch file beside it, then renamed over it,
    so another pyhv reading it meanwhile sees the old file or the new one, never part of one.
    Not synced to disk: a crash costs a cache entry, which is rebuilt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(scratch, 0o644)
        os.replace(scratch, str(path))
    except BaseException:
        if os.path.exists(scratch):
            os.unlink(scratch)
        raise


def prune_oldest(directory: Path, pattern: str, name: "re.Pattern[str]", keep: int) -> None:
    """Remove the least recently written files in ``directory`` that match the glob ``pattern``
    and whose names ``name`` matches whole, beyond the ``keep`` newest. Other files stay: the
    directory may be one a user named."""
    try:
        files = sorted((path for path in Path(directory).glob(pattern) if name.fullmatch(path.name)),
                       key=lambda path: path.stat().st_mtime, reverse=True)
        for stale in files[keep:]:
            stale.unlink()
    except OSError:
        pass  # another pyhv pruning the same directory: what is left is its business

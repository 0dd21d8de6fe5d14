"""Assembles the test guests (tests/guests/*.S) into multiboot v1 ELF32 kernels.

Each output name carries a hash of its sources, so a cache directory shared by pytest
workers, benchmarks and shells is rebuilt exactly when a source changes, and never torn:
every file is written under a temporary name and renamed into place.

Usage: python tests/guests/build.py NAME OUTDIR   (prints the path of the kernel)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Union

try:
    from pyhv.errors import PyhvError
except ImportError:  # run as a script by an interpreter without pyhv installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from pyhv.errors import PyhvError

GUEST_SOURCE_DIR = Path(__file__).resolve().parent
SHARED_SOURCES = ("common.inc", "guest.ld")
TOOL_TIMEOUT_S = 60


class GuestBuildError(PyhvError):
    """A test guest could not be assembled or linked (unknown name, bad source, missing tool)."""


def guest_names(source_dir: Path = GUEST_SOURCE_DIR) -> List[str]:
    """The guests that can be built: one per NAME.S file."""
    return sorted(path.stem for path in Path(source_dir).glob("*.S"))


def default_cache_dir() -> Path:
    """$PYHV_GUEST_CACHE, else a per-user directory under the system temp directory."""
    configured = os.environ.get("PYHV_GUEST_CACHE")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"pyhv-guests-{os.getuid()}"


def _source_digest(name: str, source_dir: Path) -> str:
    digest = hashlib.sha256()
    for file_name in (f"{name}.S",) + SHARED_SOURCES:
        digest.update(file_name.encode())
        digest.update((source_dir / file_name).read_bytes())
    return digest.hexdigest()[:16]


def _run_tool(argv: List[str], what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except FileNotFoundError as err:
        raise GuestBuildError(f"{what}: {argv[0]} not found (install binutils)") from err
    except subprocess.TimeoutExpired as err:
        raise GuestBuildError(f"{what}: {argv[0]} ran over {TOOL_TIMEOUT_S} s") from err
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        raise GuestBuildError(f"{what}: {argv[0]} failed (status {done.returncode}):\n{message}")


def build_guest(
    name: str,
    out_dir: Optional[Union[str, Path]] = None,
    source_dir: Union[str, Path] = GUEST_SOURCE_DIR,
) -> Path:
    """Builds guest ``name`` (tests/guests/NAME.S) and returns the path of its ELF kernel."""
    source_dir = Path(source_dir)
    source = source_dir / f"{name}.S"
    if not source.is_file():
        known = ", ".join(guest_names(source_dir)) or "none"
        raise GuestBuildError(f"no test guest {name!r}: {source} does not exist (known: {known})")
    for shared in SHARED_SOURCES:
        if not (source_dir / shared).is_file():
            raise GuestBuildError(f"test guest {name!r}: shared source {source_dir / shared} is missing")
    out_dir = Path(out_dir) if out_dir is not None else default_cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = out_dir / f"{name}-{_source_digest(name, source_dir)}.elf"
    if kernel.is_file():
        return kernel

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{name}-") as scratch:
        obj = Path(scratch) / f"{name}.o"
        linked = Path(scratch) / f"{name}.elf"
        _run_tool(["as", "--32", "-I", str(source_dir), "-o", str(obj), str(source)], f"assembling {source}")
        _run_tool(
            ["ld", "-m", "elf_i386", "-nostdlib", "--no-warn-rwx-segments",
             "-T", str(source_dir / "guest.ld"), "-o", str(linked), str(obj)],
            f"linking {source}",
        )
        os.replace(linked, kernel)
    return kernel


def main(argv: List[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} NAME OUTDIR   (guests: {', '.join(guest_names())})", file=sys.stderr)
        return 2
    try:
        print(build_guest(argv[1], argv[2]))
    except GuestBuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

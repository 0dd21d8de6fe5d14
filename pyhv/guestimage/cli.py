"""``pyhv guest [build|path|clean]``: build, locate or remove the cached default guest.

- ``build``: fetch the Debian packages and build the initramfs if needed, print what to boot;
- ``path``: print the cache directory (nothing is built);
- ``clean``: remove pyhv's Debian package entries and built initramfs images.

Errors print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional, TextIO

from pyhv.errors import PyhvError
from pyhv.cache import default_cache_dir
from pyhv.guestimage.default import build_default_guest

# The subdirectories of the cache this package owns; clean removes only these.
OWNED_SUBDIRS = ("debian", "guest")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyhv guest", description="Manage pyhv's default guest (Debian kernel + busybox).")
    parser.add_argument("action", choices=("build", "path", "clean"), help="what to do")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: $XDG_CACHE_HOME/pyhv or ~/.cache/pyhv)")
    return parser


def main(argv: List[str], stdout: Optional[TextIO] = None) -> int:
    """Run ``pyhv guest`` with ``argv`` (the words after ``guest``); return the exit status."""
    out = stdout or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # argparse already printed the usage line
        return int(stop.code or 0)
    root = Path(args.cache_dir or default_cache_dir())
    try:
        if args.action == "build":
            guest = build_default_guest(root)
            out.write(f"kernel: {guest.kernel}\ninitrd: {guest.initrd}\ncmdline: {guest.cmdline}\n")
            out.write(f"kernel_version: {guest.kernel_version}\n")
        elif args.action == "path":
            out.write(f"{root}\n")
        else:
            for name in OWNED_SUBDIRS:
                if (root / name).exists():
                    shutil.rmtree(str(root / name))
            out.write(f"removed {', '.join(str(root / name) for name in OWNED_SUBDIRS)}\n")
    except PyhvError as err:
        sys.stderr.write(f"pyhv guest {args.action}: {err}\n")
        return 1
    except OSError as err:
        sys.stderr.write(f"pyhv guest {args.action}: {err.filename or root}: {err.strerror}\n")
        return 1
    return 0

"""Temporary qcow2 overlays: QEMU's ``-snapshot`` and ``-drive ...,snapshot=on``.

The guest's writes go to a new qcow2 file whose backing file is the image, opened read-only;
the image is never written. As in QEMU, the overlay lives in ``$TMPDIR`` (default
``/var/tmp``, which is on disk where ``/tmp`` may be memory) and is deleted when the VM ends.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Optional

from .backend import open_image, probe_format
from .errors import BlockError
from .qcow2.create import create_qcow2

DEFAULT_TMPDIR = "/var/tmp"
SECTOR = 512


def overlay_directory() -> str:
    return os.environ.get("TMPDIR") or DEFAULT_TMPDIR


def create_temporary_overlay(path: str, fmt: Optional[str]) -> str:
    """The path of a new, empty qcow2 overlay on ``path`` (format ``fmt``, probed if None):
    it reads as the image until written."""
    backing = os.path.abspath(path)  # the overlay lives elsewhere: a relative name would break
    fmt = fmt or probe_format(backing)
    with open_image(backing, fmt, read_only=True) as image:
        size = -(-image.size // SECTOR) * SECTOR  # qcow2 sizes are whole sectors; past the end reads zeros
    try:
        handle, overlay = tempfile.mkstemp(prefix="pyhv-snapshot-", suffix=".qcow2", dir=overlay_directory())
    except OSError as err:
        raise BlockError(f"cannot create a temporary overlay in {overlay_directory()}: {err.strerror} "
                         "(set TMPDIR to a writable directory)") from err
    os.close(handle)
    try:
        create_qcow2(overlay, size, backing_file=backing, backing_format=fmt)
    except BaseException:
        os.unlink(overlay)
        raise
    return overlay


def remove_overlays(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

"""Disk images behind one block-backend interface: raw and qcow2, and ``pyhv img``."""

from __future__ import annotations

from .backend import BlockBackend, Extent, open_image, probe_format
from .errors import BlockError, BlockRequestError, ImageCorruptError, ImageFormatError

__all__ = ["BlockBackend", "Extent", "open_image", "probe_format", "BlockError",
           "BlockRequestError", "ImageCorruptError", "ImageFormatError"]

"""Errors of the block layer: disk images that cannot be opened, parsed or written."""

from __future__ import annotations

from ..errors import ConfigError, PyhvError


class BlockError(PyhvError):
    """A disk image operation failed; the message names the file and the problem."""


class ImageFormatError(BlockError):
    """An image is malformed, truncated or uses a feature pyhv does not support."""


class ImageCorruptError(ImageFormatError):
    """Metadata inside an image is inconsistent (bad offsets, overlapping clusters)."""


class BlockRequestError(BlockError):
    """A request is outside the device or not allowed (write to a read-only image)."""


class BlockOptionError(BlockError, ConfigError):
    """A bad image option on the command line (size, cluster_size, format name)."""

"""Changing a qcow2 image's virtual size: a larger L1 table when growing, unmapping when
shrinking. The new L1 is written and flushed before the header points to it; the old one
is freed only after."""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from .. import fileio
from ..errors import BlockOptionError, BlockRequestError
from .header import MAX_L1_BYTES

if TYPE_CHECKING:
    from .image import Qcow2Image


def resize_image(image: "Qcow2Image", new_size: int) -> None:
    if image.read_only:
        raise BlockRequestError(f"{image.filename}: image is opened read-only")
    if new_size < 0 or new_size % 512:
        raise BlockOptionError(f"new size {new_size} must be a non-negative multiple of 512")
    if image.snapshots:
        raise BlockOptionError(f"{image.filename}: cannot resize an image with internal snapshots")
    h = image.header
    cs = image.cluster_size
    if new_size < h.size:
        first_dropped = -(-new_size // cs) * cs
        if first_dropped < h.size:
            image._unmap(first_dropped, h.size - first_dropped, zero=False, keep_backing=True)
    image.flush()
    needed = -(-new_size // (cs * (cs // 8)))
    if needed > h.l1_size:
        if needed * 8 > MAX_L1_BYTES:
            raise BlockOptionError(f"{image.filename}: size {new_size} needs an L1 table larger "
                                   f"than {MAX_L1_BYTES} bytes")
        clusters = -(-needed * 8 // cs)
        new_offset = image.refcounts.alloc(clusters)
        image.refcounts.write_dirty()
        new_l1 = image.l1 + [0] * (needed - len(image.l1))
        fileio.pwrite_all(image.fd, struct.pack(">%dQ" % needed, *new_l1), new_offset)
        os.fdatasync(image.fd)
        old_offset, old_clusters = h.l1_table_offset, -(-h.l1_size * 8 // cs)
        h.l1_table_offset, h.l1_size, h.size = new_offset, needed, new_size
        image._write_header()
        os.fdatasync(image.fd)
        image.l1 = new_l1
        if old_clusters:
            image.refcounts.free(old_offset, old_clusters)
    else:
        h.size = new_size
        image._write_header()
    image.size = new_size
    image.flush()

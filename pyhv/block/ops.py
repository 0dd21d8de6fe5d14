"""The data-moving operations behind ``pyhv img``: convert, commit, rebase, compare.

Each walks the source's allocation map (``block_status``) so that zero and unallocated
ranges cost nothing, and reports progress as a fraction through an optional callback.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional

from .backend import BlockBackend, open_image, probe_format
from .errors import BlockError, BlockOptionError
from .qcow2.create import create_qcow2, create_raw
from .qcow2.image import Qcow2Image

Progress = Optional[Callable[[float], None]]
CHUNK = 1 << 20


def create_image(path: str, fmt: str, size: Optional[int], options: Dict[str, str]) -> None:
    """Create an image as ``qemu-img create`` does; size defaults to the backing file's."""
    from .sizes import parse_size
    backing = options.pop("backing_file", None)
    backing_fmt = options.pop("backing_fmt", None)
    if fmt == "raw":
        if backing:
            raise BlockOptionError("raw images cannot have a backing file")
        _no_unknown(options, fmt)
        if size is None:
            raise BlockOptionError("image size must be given")
        create_raw(path, size)
        return
    if fmt != "qcow2":
        raise BlockOptionError(f"unknown image format '{fmt}' (known: raw, qcow2)")
    if backing:
        full = backing if os.path.isabs(backing) else os.path.join(os.path.dirname(path),
                                                                    backing)
        if backing_fmt is None:
            backing_fmt = probe_format(full)
        if size is None:
            with open_image(full, backing_fmt, read_only=True) as base:
                size = base.size
    if size is None:
        raise BlockOptionError("image size must be given (or a backing file to take it from)")
    compat = options.pop("compat", "1.1")
    if compat not in ("0.10", "1.1", "v2", "v3"):
        raise BlockOptionError(f"compat '{compat}' is not one of 0.10, 1.1")
    cluster_size = parse_size(options.pop("cluster_size", "65536"), "cluster_size")
    lazy = options.pop("lazy_refcounts", "off") in ("on", "true", "yes")
    refcount_bits = int(options.pop("refcount_bits", "16"))
    if options.pop("preallocation", "off") != "off":
        raise BlockOptionError("only preallocation=off is supported")
    _no_unknown(options, fmt)
    create_qcow2(path, size, cluster_size, 2 if compat in ("0.10", "v2") else 3, backing,
                 backing_fmt, lazy, refcount_bits)


def _no_unknown(options: Dict[str, str], fmt: str) -> None:
    if options:
        raise BlockOptionError(f"format '{fmt}' does not support option "
                               f"'{sorted(options)[0]}'")


def convert(src: BlockBackend, dst: BlockBackend, compress: bool = False,
            progress: Progress = None) -> None:
    """Copy every non-zero range of ``src`` into a freshly created ``dst``."""
    if compress and not isinstance(dst, Qcow2Image):
        raise BlockOptionError("compression (-c) needs a qcow2 output image")
    unit = dst.cluster_size if isinstance(dst, Qcow2Image) else 65536
    total = max(src.size, 1)
    for extent in src.block_status(0, src.size):
        if extent.data:
            _copy_range(src, dst, extent.start, extent.length, unit, compress)
        if progress:
            progress((extent.start + extent.length) / total)
    dst.flush()


def _copy_range(src: BlockBackend, dst: BlockBackend, start: int, length: int, unit: int,
                compress: bool) -> None:
    end = start + length
    pos = start
    buf = bytearray(max(CHUNK, unit))
    while pos < end:
        # chunks aligned to the destination's clusters so zero detection matches them
        step = min(end, (pos // unit + 1) * unit + CHUNK - unit) - pos
        view = memoryview(buf)[:step]
        src.readinto(pos, view)
        piece = pos
        while piece < pos + step:
            cut = min(pos + step, (piece // unit + 1) * unit)
            part = view[piece - pos:cut - pos]
            if part.tobytes().count(0) != len(part):
                if compress and piece % unit == 0 and (cut - piece == unit or cut == dst.size):
                    dst.write_compressed(piece, part)
                else:
                    dst.write(piece, part)
            piece = cut
        pos += step


def commit(top: Qcow2Image, keep: bool = False, progress: Progress = None) -> None:
    """Write the data of ``top`` into its backing file, then empty ``top`` (unless ``keep``)."""
    if top.backing is None:
        raise BlockOptionError(f"'{top.filename}' has no backing file to commit to")
    base_path = top.backing.filename
    base_fmt = top.backing.format_name
    with open_image(base_path, base_fmt, read_only=False) as base:
        total = max(top.size, 1)
        for extent in top.block_status(0, top.size):
            if extent.depth == 0 and extent.present:
                if extent.start >= base.size:
                    break
                length = min(extent.length, base.size - extent.start)
                if extent.data:
                    pos = extent.start
                    while pos < extent.start + length:
                        step = min(CHUNK, extent.start + length - pos)
                        base.write(pos, top.read(pos, step))
                        pos += step
                else:
                    base.write_zeroes(extent.start, length)
            if progress:
                progress((extent.start + extent.length) / total)
    if not keep:
        top.make_empty()
    top.flush()


def rebase(top: Qcow2Image, new_backing: Optional[str], new_fmt: Optional[str],
           unsafe: bool = False, progress: Progress = None) -> None:
    """Point ``top`` at ``new_backing``; safe mode first copies into ``top`` every range
    where the old and the new backing differ, so the guest sees the same disk."""
    if unsafe:
        top.set_backing(new_backing, new_fmt)
        return
    new: Optional[BlockBackend] = None
    if new_backing:
        full = new_backing if os.path.isabs(new_backing) else os.path.join(
            os.path.dirname(top.filename), new_backing)
        new_fmt = new_fmt or probe_format(full)
        new = open_image(full, new_fmt, read_only=True)
    try:
        total = max(top.size, 1)
        for extent in top.block_status(0, top.size):
            if extent.depth > 0 or not extent.present:
                pos = extent.start
                while pos < extent.start + extent.length:
                    step = min(CHUNK, extent.start + extent.length - pos)
                    old_data = top.read(pos, step)
                    if _read_or_zero(new, pos, step) != old_data:
                        top.write(pos, old_data)
                    pos += step
            if progress:
                progress((extent.start + extent.length) / total)
        top.flush()
        top.set_backing(new_backing, new_fmt)
    finally:
        if new is not None:
            new.close()


def _read_or_zero(image: Optional[BlockBackend], offset: int, length: int) -> bytes:
    if image is None or offset >= image.size:
        return bytes(length)
    inside = min(length, image.size - offset)
    return image.read(offset, inside) + bytes(length - inside)


def compare(a: BlockBackend, b: BlockBackend, strict: bool = False) -> Optional[str]:
    """None when the guest-visible contents are equal, else the mismatch message."""
    if strict and a.size != b.size:
        return "Image size mismatch!"
    common = min(a.size, b.size)
    pos = 0
    while pos < common:
        step = min(CHUNK, common - pos)
        left, right = a.read(pos, step), b.read(pos, step)
        if left != right:
            return f"Content mismatch at offset {pos + _first_difference(left, right)}!"
        pos += step
    longer = a if a.size > b.size else b
    while pos < longer.size:
        step = min(CHUNK, longer.size - pos)
        data = longer.read(pos, step)
        if data.count(0) != len(data):
            return f"Content mismatch at offset {pos + _first_difference(data, bytes(step))}!"
        pos += step
    return None


def _first_difference(left: bytes, right: bytes) -> int:
    for sector in range(0, len(left), 512):
        if left[sector:sector + 512] != right[sector:sector + 512]:
            return sector
    raise BlockError("buffers differ but no differing sector was found")

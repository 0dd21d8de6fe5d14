"""Allocation status of a qcow2 image's guest ranges, through its backing chain (``map``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, List

from ..backend import Extent
from . import entries as E

if TYPE_CHECKING:
    from .image import Qcow2Image


def qcow2_block_status(image: "Qcow2Image", offset: int, length: int) -> List[Extent]:
    cs, cb = image.cluster_size, image.cluster_bits
    pieces: List[Extent] = []
    pos, end = offset, offset + length
    while pos < end:
        within = pos & (cs - 1)
        run = min(cs - within, end - pos)
        entry = image.l2_entry(pos >> cb)
        kind = E.classify(entry, image.version)
        if kind == E.NORMAL:
            host = (entry & E.OFFSET_MASK) + within
            pieces.append(Extent(pos, run, True, False, 0, True, host, image.filename))
        elif kind == E.ZERO_CLUSTER:
            pieces.append(Extent(pos, run, False, True, 0, True, None, image.filename))
        elif kind == E.COMPRESSED_CLUSTER:
            pieces.append(Extent(pos, run, True, False, 0, True, None, image.filename, True))
        else:
            pieces.extend(_from_backing(image, pos, run))
        pos += run
    return merge_extents(pieces)


def _from_backing(image: "Qcow2Image", pos: int, run: int) -> List[Extent]:
    backing = image.backing
    if backing is None:
        return [Extent(pos, run, False, True, 0, False, None, image.filename)]
    inside = max(0, min(run, backing.size - pos))
    out = [e._replace(depth=e.depth + 1) for e in backing.block_status(pos, inside)] \
        if inside else []
    if inside < run:
        out.append(Extent(pos + inside, run - inside, False, True, 1, False, None,
                          backing.filename))
    return out


def merge_extents(pieces: List[Extent]) -> List[Extent]:
    merged: List[Extent] = []
    for piece in pieces:
        if merged:
            last = merged[-1]
            same = (last.data, last.zero, last.depth, last.present, last.compressed,
                    last.filename) == (piece.data, piece.zero, piece.depth, piece.present,
                                       piece.compressed, piece.filename)
            contiguous = (last.host_offset is None and piece.host_offset is None) or (
                last.host_offset is not None and piece.host_offset is not None
                and last.host_offset + last.length == piece.host_offset)
            if same and contiguous and last.start + last.length == piece.start:
                merged[-1] = last._replace(length=last.length + piece.length)
                continue
        merged.append(piece)
    return merged

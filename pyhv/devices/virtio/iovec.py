"""Scatter-gather lists of guest buffers as memoryviews straight into guest RAM.

Devices slice a request's buffers by byte count (a header, the data, a status byte) without
assuming how the driver framed them into descriptors (virtio 1.2, 2.6.4), and hand the
views to ``os.preadv``-style calls so no byte is copied on the way.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

from ...memory import GuestMemory
from .queue import Descriptor


def descriptor_views(memory: GuestMemory, descriptors: Iterable[Descriptor]) -> List[memoryview]:
    """Views of the descriptors' buffers (already checked against RAM by the queue)."""
    return [memory.view(d.gpa, d.length) for d in descriptors if d.length]


def total_length(views: Sequence[memoryview]) -> int:
    return sum(map(len, views))


def split_at(views: Sequence[memoryview], count: int) -> Tuple[List[memoryview], List[memoryview]]:
    """The first ``count`` bytes and the rest; the first part is shorter if there is less."""
    head: List[memoryview] = []
    tail: List[memoryview] = []
    for view in views:
        if count >= len(view):
            head.append(view)
            count -= len(view)
        elif count > 0:
            head.append(view[:count])
            tail.append(view[count:])
            count = 0
        else:
            tail.append(view)
    return head, tail


def gather(views: Sequence[memoryview]) -> bytes:
    return b"".join(bytes(v) for v in views)


def scatter(views: Sequence[memoryview], data: bytes) -> int:
    """Copy ``data`` into the views in order; the number of bytes that fit."""
    done = 0
    for view in views:
        if done >= len(data):
            break
        chunk = min(len(view), len(data) - done)
        view[:chunk] = data[done:done + chunk]
        done += chunk
    return done

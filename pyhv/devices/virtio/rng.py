"""virtio-rng (virtio 1.2, 5.4): fills the driver's writable buffers from the host's
``os.urandom``. One queue, no features, no config space."""

from __future__ import annotations

import os

from ...memory import GuestMemory
from . import spec
from .device import VirtioDevice
from .iovec import descriptor_views, scatter, total_length

QUEUE_SIZE = 64
# A request asking for more gets this much: Linux asks for at most a page or so, and a
# guest must not make the host draw megabytes of entropy per kick.
MAX_BYTES_PER_REQUEST = 64 * 1024


class VirtioRng(VirtioDevice):
    device_id = spec.ID_ENTROPY
    name = "virtio-rng"

    def __init__(self, memory: GuestMemory, packed: bool = False) -> None:
        super().__init__(memory, [QUEUE_SIZE], packed=packed)

    def process_queue(self, index: int) -> None:
        queue = self.queues[index]
        used = 0
        for chain in queue.iter_available(self.memory):
            views = descriptor_views(self.memory, chain.writable)
            wanted = min(total_length(views), MAX_BYTES_PER_REQUEST)
            written = scatter(views, os.urandom(wanted))
            queue.add_used(self.memory, chain.head, written)
            used += 1
        if used:
            self.signal_used(queue)

"""virtio-console (virtio 1.2, 5.3) with one port, hvc0, and no MULTIPORT, on a
:class:`pyhv.chardev.CharBackend`.

Queue 0 (receiveq) carries host input to the guest, queue 1 (transmitq) guest output to
the back-end. Input arrives on the back-end's thread at any time: it waits in a bounded
buffer until the driver has posted receive buffers, and bytes past the bound are dropped
(a real UART drops them too when its FIFO is full) and counted.
"""

from __future__ import annotations

import struct

from ...chardev import CharBackend
from ...memory import GuestMemory
from . import spec
from .device import VirtioDevice
from .iovec import descriptor_views, gather, scatter
from .queue import VirtqueueError

F_SIZE = 0
F_MULTIPORT = 1
F_EMERG_WRITE = 2

RECEIVE_QUEUE = 0
TRANSMIT_QUEUE = 1
QUEUE_SIZE = 128
MAX_PENDING_INPUT = 64 * 1024
EMERG_WR_OFFSET = 8

_CONFIG = struct.Struct("<HHII")  # cols, rows, max_nr_ports, emerg_wr


class VirtioConsole(VirtioDevice):
    device_id = spec.ID_CONSOLE
    name = "virtio-console"

    def __init__(self, memory: GuestMemory, backend: CharBackend, packed: bool = False) -> None:
        super().__init__(memory, [QUEUE_SIZE, QUEUE_SIZE], spec.bit(F_EMERG_WRITE), packed)
        self.backend = backend
        self.pending_input = bytearray()
        self.dropped_input = 0

    def config_space(self) -> bytes:
        return _CONFIG.pack(0, 0, 1, 0)

    def write_config(self, offset: int, size: int, value: int) -> None:
        if offset == EMERG_WR_OFFSET and self.has_feature(F_EMERG_WRITE):
            self.backend.write(bytes([value & 0xFF]))

    # --- host -> guest ----------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """The back-end's receiver: host input for the guest (called from its thread)."""
        with self.lock:
            room = MAX_PENDING_INPUT - len(self.pending_input)
            self.pending_input += data[:room]
            self.dropped_input += max(0, len(data) - room)
            self._deliver_input()

    def _deliver_input(self) -> None:
        queue = self.queues[RECEIVE_QUEUE]
        if not (self.active and queue.ready) or self.broken:
            return
        used = 0
        try:
            while self.pending_input:
                chain = queue.pop(self.memory)
                if chain is None:
                    break
                count = scatter(descriptor_views(self.memory, chain.writable), self.pending_input)
                del self.pending_input[:count]
                queue.add_used(self.memory, chain.head, count)
                used += 1
            if used:
                self.signal_used(queue)
        except VirtqueueError as err:
            self.fail(RECEIVE_QUEUE, err)

    # --- the queues -------------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        if index == RECEIVE_QUEUE:
            self._deliver_input()
            return
        queue = self.queues[TRANSMIT_QUEUE]
        used = 0
        for chain in queue.iter_available(self.memory):
            data = gather(descriptor_views(self.memory, chain.readable))
            if data:
                self.backend.write(data)
            queue.add_used(self.memory, chain.head, 0)
            used += 1
        if used:
            self.signal_used(queue)

    def activated(self) -> None:
        self._deliver_input()

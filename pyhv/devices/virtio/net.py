"""virtio-net (virtio 1.2, 5.1): one receive and one transmit queue on a :class:`NetBackend`.

Offered: VIRTIO_NET_F_MAC (the MAC in config space) and VIRTIO_NET_F_STATUS (link up), no
offloads, no mergeable buffers, no control queue: frames cross as plain Ethernet behind the
12-byte virtio_net_hdr, whose fields the driver leaves zero when nothing is negotiated.

Receive: the back-end's thread calls :meth:`VirtioNet.receive`; frames wait in a bounded
backlog until the driver has posted buffers, then each fills one chain. A frame longer than
the chain at the head of the ring is dropped (and counted) and the chain stays for the next
frame, as a NIC drops what does not fit its descriptor.
"""

from __future__ import annotations

import collections
import logging
import re
import struct
from typing import Deque

from ...errors import ConfigError
from ...memory import GuestMemory
from ...net.backend import MAX_FRAME_SIZE, NetBackend
from . import spec
from .device import VirtioDevice
from .iovec import descriptor_views, gather, scatter, total_length
from .queue import VirtqueueError

log = logging.getLogger("pyhv.virtio.net")

F_MAC = 5
F_STATUS = 16
STATUS_LINK_UP = 1

RECEIVE_QUEUE = 0
TRANSMIT_QUEUE = 1
QUEUE_SIZE = 256
MAX_BACKLOG_FRAMES = 256

# struct virtio_net_hdr with num_buffers (always present with VERSION_1): flags, gso_type,
# hdr_len, gso_size, csum_start, csum_offset, num_buffers.
HEADER = struct.Struct("<BBHHHHH")
HDR_F_NEEDS_CSUM = 1
GSO_NONE = 0
ETHERNET_MIN_FRAME = 14

DEFAULT_MAC = bytes.fromhex("525400123456")  # QEMU's first NIC
_MAC_TEXT = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def parse_mac(text: str) -> bytes:
    """``52:54:00:12:34:56`` -> 6 bytes; a multicast address cannot be a NIC's."""
    if not _MAC_TEXT.match(text):
        raise ConfigError(f"mac={text}: not a MAC address of the form 52:54:00:12:34:56")
    mac = bytes(int(part, 16) for part in text.split(":"))
    if mac[0] & 1:
        raise ConfigError(f"mac={text}: a multicast address cannot be a NIC's address")
    return mac


class VirtioNet(VirtioDevice):
    device_id = spec.ID_NET
    name = "virtio-net"

    def __init__(self, memory: GuestMemory, backend: NetBackend, mac: bytes = DEFAULT_MAC,
                 packed: bool = False) -> None:
        super().__init__(memory, [QUEUE_SIZE, QUEUE_SIZE], spec.bit(F_MAC) | spec.bit(F_STATUS), packed)
        if len(mac) != 6:
            raise ConfigError(f"virtio-net: MAC address must be 6 bytes, got {len(mac)}")
        self.backend = backend
        self.mac = bytes(mac)
        self.backlog: Deque[bytes] = collections.deque()
        self.rx_dropped_backlog = 0  # the driver posted no buffers in time
        self.rx_dropped_too_long = 0  # longer than the chain offered for it
        self.tx_dropped = 0  # malformed or oversized frames from the guest

    def config_space(self) -> bytes:
        return self.mac + struct.pack("<H", STATUS_LINK_UP)

    def start_backend(self) -> None:
        """Start the back-end's reader thread delivering into :meth:`receive`."""
        self.backend.start(self.receive)

    # --- host -> guest ------------------------------------------------------------------------
    def receive(self, frame: bytes) -> None:
        """A frame for the guest (called from the back-end's thread)."""
        with self.lock:
            if len(self.backlog) >= MAX_BACKLOG_FRAMES:
                self.rx_dropped_backlog += 1
                return
            self.backlog.append(frame)
            self._deliver()

    def _deliver(self) -> None:
        queue = self.queues[RECEIVE_QUEUE]
        if not (self.active and queue.ready) or self.broken:
            return
        used = 0
        try:
            while self.backlog:
                chain = queue.pop(self.memory)
                if chain is None:
                    break
                frame = self.backlog.popleft()
                views = descriptor_views(self.memory, chain.writable)
                if total_length(views) < HEADER.size + len(frame):
                    self.rx_dropped_too_long += 1
                    queue.unpop(chain)  # the chain waits for the next frame
                    continue
                written = scatter(views, HEADER.pack(0, GSO_NONE, 0, 0, 0, 0, 1) + frame)
                queue.add_used(self.memory, chain.head, written)
                used += 1
            if used:
                self.signal_used(queue)
        except VirtqueueError as err:
            self.fail(RECEIVE_QUEUE, err)

    # --- guest -> host ----------------------------------------------------------------------------
    def _transmit(self) -> None:
        queue = self.queues[TRANSMIT_QUEUE]
        used = 0
        for chain in queue.iter_available(self.memory):
            views = descriptor_views(self.memory, chain.readable)
            length = total_length(views)
            if length < HEADER.size:
                raise VirtqueueError(f"transmit chain {chain.head} has {length} bytes, less than the "
                                     f"{HEADER.size}-byte virtio_net_hdr")
            if length > HEADER.size + MAX_FRAME_SIZE:
                self.tx_dropped += 1  # checked before copying: the chain may span all of RAM
                queue.add_used(self.memory, chain.head, 0)
                used += 1
                continue
            packet = gather(views)
            flags, gso_type = packet[0], packet[1]
            frame = packet[HEADER.size:]
            if flags & HDR_F_NEEDS_CSUM or gso_type != GSO_NONE or len(frame) < ETHERNET_MIN_FRAME:
                # Offload requests that were never negotiated, runt or giant frames.
                self.tx_dropped += 1
            else:
                self.backend.send(frame)
            queue.add_used(self.memory, chain.head, 0)
            used += 1
        if used:
            self.signal_used(queue)

    # --- VirtioDevice -------------------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        if index == RECEIVE_QUEUE:
            self._deliver()
        else:
            self._transmit()

    def activated(self) -> None:
        self._deliver()

    def device_reset(self) -> None:
        self.backlog.clear()

    def close(self) -> None:
        self.backend.close()

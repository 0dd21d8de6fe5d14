"""virtio-net (virtio 1.2, 5.1): one receive and one transmit queue on a :class:`NetBackend`.

Offered: VIRTIO_NET_F_MAC (the MAC in config space), VIRTIO_NET_F_STATUS (link up) and, as
QEMU does, VIRTIO_NET_F_MRG_RXBUF (mergeable receive buffers); no control queue. Frames cross
behind the 12-byte virtio_net_hdr.

Offloads, as QEMU offers them on a TAP back-end: only where the back-end carries that header
too (a TAP with IFF_VNET_HDR), checksum offload and TCP segmentation (IPv4, IPv6, ECN) in
both directions. The guest's header then goes to the host kernel as it is, which checks it,
and the kernel is told (TUNSETOFFLOAD) to hand over only the kinds of packets the driver
accepted for receiving. A Linux driver that accepts GUEST_TSO* without MRG_RXBUF posts
64 KiB chains so that one holds a whole packet; with MRG_RXBUF it posts page-sized ones. Over
the socket back-ends frames are plain Ethernet and the header's fields stay zero, so no
offload is offered.

Receive: the back-end's thread calls :meth:`VirtioNet.receive`; frames wait in a bounded
backlog until the driver has posted buffers. Without MRG_RXBUF each fills one chain; a frame
longer than the chain at the head of the ring is dropped (and counted) and the chain stays
for the next frame, as a NIC drops what does not fit its descriptor. With MRG_RXBUF (5.1.6.4)
header and frame run on through as many chains as they need, num_buffers in the header says
how many, and they go to the used ring together. A packet waits until the ring holds enough
bytes, nothing used meanwhile (the chains taken so far stay with the device); one that the
whole ring, every slot posted, could not hold is dropped and counted. Every chain must have
a device-writable buffer (QEMU's rule too): a chain without one needs a reset. One shorter
than the header, which the spec forbids, is still filled, the header running on into the
next chain.
"""

from __future__ import annotations

import collections
import logging
import re
import struct
from typing import Deque, FrozenSet, List, NamedTuple, Optional, Tuple

from ...errors import ConfigError
from ...memory import GuestMemory
from ...net.backend import MAX_FRAME_SIZE, NO_OFFLOADS, VNET_HEADER_SIZE, NetBackend, Offloads
from . import spec
from .device import Virtqueue, VirtioDevice
from .iovec import descriptor_views, gather, scatter, split_at, total_length
from .queue import DescriptorChain, VirtqueueError

log = logging.getLogger("pyhv.virtio.net")

F_CSUM = 0  # the driver may leave checksums to the device (transmit)
F_GUEST_CSUM = 1  # the device may hand partial checksums to the driver (receive)
F_MAC = 5
F_GUEST_TSO4 = 7
F_GUEST_TSO6 = 8
F_GUEST_ECN = 9
F_HOST_TSO4 = 11
F_HOST_TSO6 = 12
F_HOST_ECN = 13
F_MRG_RXBUF = 15  # a received packet may span several chains
F_STATUS = 16
STATUS_LINK_UP = 1

RECEIVE_QUEUE = 0
TRANSMIT_QUEUE = 1
QUEUE_SIZE = 256
MAX_BACKLOG_FRAMES = 256

# struct virtio_net_hdr with num_buffers (always present with VERSION_1): flags, gso_type,
# hdr_len, gso_size, csum_start, csum_offset, num_buffers.
HEADER = struct.Struct("<BBHHHHH")
assert HEADER.size == VNET_HEADER_SIZE
NUM_BUFFERS = struct.Struct("<H")  # the header's last field
HDR_F_NEEDS_CSUM = 1
HDR_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80  # with a TCP type: segments that carry the CWR flag
ETHERNET_MIN_FRAME = 14
ZERO_RECEIVE_HEADER = HEADER.pack(0, GSO_NONE, 0, 0, 0, 0, 1)

OFFLOAD_FEATURES = sum(spec.bit(bit) for bit in (F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN,
                                                 F_HOST_TSO4, F_HOST_TSO6, F_HOST_ECN))
# Each offload and the features one of which it needs (virtio 1.2, 5.1.3.1); the TAP driver
# refuses the same combinations in TUNSETOFFLOAD.
FEATURE_NEEDS = {
    F_GUEST_TSO4: spec.bit(F_GUEST_CSUM), F_GUEST_TSO6: spec.bit(F_GUEST_CSUM),
    F_GUEST_ECN: spec.bit(F_GUEST_TSO4) | spec.bit(F_GUEST_TSO6),
    F_HOST_TSO4: spec.bit(F_CSUM), F_HOST_TSO6: spec.bit(F_CSUM),
    F_HOST_ECN: spec.bit(F_HOST_TSO4) | spec.bit(F_HOST_TSO6),
}


class HeaderRules(NamedTuple):
    """What a virtio_net_hdr may ask for in one direction, given the negotiated features."""

    flags: int
    gso_types: FrozenSet[int]

    def allow(self, flags: int, gso_type: int) -> bool:
        return not flags & ~self.flags and gso_type in self.gso_types


def header_rules(offloads: Offloads, extra_flags: int = 0) -> HeaderRules:
    tso_types = [gso for gso, on in ((GSO_TCPV4, offloads.tso4), (GSO_TCPV6, offloads.tso6)) if on]
    gso_types = {GSO_NONE, *tso_types, *(gso | GSO_ECN for gso in tso_types if offloads.tso_ecn)}
    return HeaderRules((HDR_F_NEEDS_CSUM | extra_flags) if offloads.csum else 0, frozenset(gso_types))


PLAIN_FRAMES = header_rules(NO_OFFLOADS)

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
        offloads = OFFLOAD_FEATURES if backend.vnet_header else 0
        features = spec.bit(F_MAC) | spec.bit(F_STATUS) | spec.bit(F_MRG_RXBUF) | offloads
        super().__init__(memory, [QUEUE_SIZE, QUEUE_SIZE], features, packed)
        if len(mac) != 6:
            raise ConfigError(f"virtio-net: MAC address must be 6 bytes, got {len(mac)}")
        self.backend = backend
        self.mac = bytes(mac)
        # Frames from the back-end, with their virtio_net_hdr where the back-end has one.
        self.backlog: Deque[bytes] = collections.deque()
        self.rx_dropped_backlog = 0  # the driver posted no buffers in time
        self.rx_dropped_too_long = 0  # longer than the chain (or, merged, the whole ring) offered
        self.rx_dropped_offload = 0  # offloaded the way the driver did not accept
        self.tx_dropped = 0  # malformed or oversized frames, or headers the host refused
        self._transmit_rules = PLAIN_FRAMES
        self._receive_rules = PLAIN_FRAMES
        self._mergeable = False  # MRG_RXBUF negotiated
        # Receive chains taken from the ring for a packet that needs more than it holds yet.
        # Kept rather than given back, so that the next chain the driver posts is past where
        # the device asked to be notified (EVENT_IDX), and no chain is walked twice.
        self._held: Deque[Tuple[DescriptorChain, List[memoryview]]] = collections.deque()
        self._refusal_logged = False

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
        place = self._place_merged if self._mergeable else self._place_whole
        used = 0
        try:
            while self.backlog:
                framed = self._framed_for_guest(self.backlog[0])
                if framed is None:
                    self.backlog.popleft()
                    self.rx_dropped_offload += 1
                    continue
                placed = place(queue, *framed)
                if placed is None:
                    break  # waits for buffers
                self.backlog.popleft()
                used += placed
            if used:
                self.signal_used(queue)
        except VirtqueueError as err:
            self.fail(RECEIVE_QUEUE, err)

    def _place_whole(self, queue: Virtqueue, header: bytes, frame: memoryview) -> Optional[int]:
        """The packet into the chain at the head of the ring: the chains used (1, or 0 when it
        was dropped), None when there is no chain."""
        chain = queue.pop(self.memory)
        if chain is None:
            return None
        views = descriptor_views(self.memory, chain.writable)
        if total_length(views) < HEADER.size + len(frame):
            self.rx_dropped_too_long += 1
            queue.unpop(chain)  # the chain waits for the next frame
            return 0
        header_views, frame_views = split_at(views, HEADER.size)
        scatter(header_views, header)
        scatter(frame_views, frame)
        queue.add_used(self.memory, chain.head, HEADER.size + len(frame))
        return 1

    def _place_merged(self, queue: Virtqueue, header: bytes, frame: memoryview) -> Optional[int]:
        """The packet across as many chains as it needs: how many (0 when it was dropped), or
        None while the ring holds too few bytes for it."""
        needed = HEADER.size + len(frame)
        held = self._held
        room = sum(total_length(views) for _, views in held)
        while room < needed:
            chain = queue.pop(self.memory)
            if chain is None:
                if sum(taken.slots for taken, _ in held) < queue.size:
                    return None  # the driver may still post more
                self.rx_dropped_too_long += 1  # and the chains stay for smaller packets
                return 0
            if not chain.writable:
                raise VirtqueueError(f"receive chain {chain.head} has no device-writable buffer")
            views = descriptor_views(self.memory, chain.writable)
            held.append((chain, views))
            room += total_length(views)
        entries = []
        all_views: List[memoryview] = []
        left = needed
        while left:  # the chains at the front that the packet fills
            chain, views = held.popleft()
            written = min(total_length(views), left)
            entries.append((chain.head, written))
            all_views += views
            left -= written
        header_views, frame_views = split_at(all_views, HEADER.size)
        scatter(header_views, header[:-NUM_BUFFERS.size] + NUM_BUFFERS.pack(len(entries)))
        scatter(frame_views, frame)
        queue.add_used_batch(self.memory, entries)
        return len(entries)

    def _framed_for_guest(self, packet: bytes) -> Optional[Tuple[bytes, memoryview]]:
        """(virtio_net_hdr, frame) for the driver, or None when the packet is offloaded in a
        way it did not accept: one read just before a reset lowered the TAP's offloads."""
        if not self.backend.vnet_header:
            return ZERO_RECEIVE_HEADER, memoryview(packet)
        if len(packet) < HEADER.size:
            return None
        rules = self._receive_rules
        # DATA_VALID is a hint the driver may go without; without GUEST_CSUM flags must be 0.
        flags = packet[0] & ~(HDR_F_DATA_VALID & ~rules.flags)
        if not rules.allow(flags, packet[1]):
            return None
        # The kernel leaves num_buffers zero; one chain, unless the packet is merged.
        header = bytes([flags]) + packet[1:HEADER.size - 2] + b"\x01\x00"
        return header, memoryview(packet)[HEADER.size:]

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
            # The giant check comes before anything is copied: the chain may span all of RAM.
            if ETHERNET_MIN_FRAME <= length - HEADER.size <= MAX_FRAME_SIZE:
                self._send(views)
            else:
                self.tx_dropped += 1
            queue.add_used(self.memory, chain.head, 0)
            used += 1
        if used:
            self.signal_used(queue)

    def _send(self, views: List[memoryview]) -> None:
        header_views, frame_views = split_at(views, HEADER.size)
        # A copy of the header, so that what was checked is what the back-end gets even if
        # the guest rewrites it meanwhile; the frame goes straight from guest memory.
        header = gather(header_views)
        if not self._transmit_rules.allow(header[0], header[1]):
            self.tx_dropped += 1  # offloads that were never negotiated
            return
        if not self.backend.vnet_header:
            self.backend.send_parts(frame_views)
        elif not self.backend.send_parts([header, *frame_views]):
            self.tx_dropped += 1
            if not self._refusal_logged:
                self._refusal_logged = True
                log.warning("%s: the host refused a transmitted packet's virtio_net_hdr %s; dropped "
                            "(logged once)", self.name, HEADER.unpack(header))

    # --- VirtioDevice -------------------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        if index == RECEIVE_QUEUE:
            self._deliver()
        else:
            self._transmit()

    def _features_acceptable(self) -> bool:
        for feature, needs in FEATURE_NEEDS.items():
            if self.has_feature(feature) and not self.acked_features & needs:
                log.warning("%s: driver accepted feature %d without one it depends on (%#x)",
                            self.name, feature, needs)
                return False
        return super()._features_acceptable()

    def activated(self) -> None:
        transmit = Offloads(*map(self.has_feature, (F_CSUM, F_HOST_TSO4, F_HOST_TSO6, F_HOST_ECN)))
        receive = Offloads(*map(self.has_feature, (F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN)))
        self._transmit_rules = header_rules(transmit)
        self._receive_rules = header_rules(receive, HDR_F_DATA_VALID)
        self._mergeable = self.has_feature(F_MRG_RXBUF)
        self.backend.set_offloads(receive)
        self._deliver()

    def device_reset(self) -> None:
        self.backlog.clear()
        self._transmit_rules = self._receive_rules = PLAIN_FRAMES
        self._mergeable = False
        self._held.clear()  # the queue's reset forgot them
        self.backend.set_offloads(NO_OFFLOADS)

    def close(self) -> None:
        self.backend.close()

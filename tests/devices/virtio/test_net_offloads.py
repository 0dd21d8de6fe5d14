"""virtio-net offloads on a TAP with IFF_VNET_HDR, checked against the host kernel: the TAP
lives in a network namespace made for the test, where a UDP socket, the namespace's own
packets and the TAP's feature flags show what the kernel made of each virtio_net_hdr."""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import socket
import struct

import pytest

from pyhv.devices.virtio import net, spec
from pyhv.devices.virtio.mock_driver import Buffer
from pyhv.net.backend import open_netdev, parse_netdev
from pyhv.net.socket import StreamBackend

HDR = net.HEADER.size
TAP = "pyhvtap0"
HOST_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"
GUEST_MAC = bytes.fromhex("525400abcdef")  # NetRig's card
UDP_PORT = 5555
ETH_HLEN, IP_HLEN, UDP_HLEN = 14, 20, 8
UDP_CHECKSUM_OFFSET = 6
ALL_OFFLOADS = [net.F_CSUM, net.F_GUEST_CSUM, net.F_GUEST_TSO4, net.F_GUEST_TSO6, net.F_GUEST_ECN,
                net.F_HOST_TSO4, net.F_HOST_TSO6, net.F_HOST_ECN]
F_GUEST_UFO, F_HOST_UFO = 10, 14  # not offered
# The TAP's netdev features (ethtool's names) that TUNSETOFFLOAD turns on.
TAP_OFFLOAD_FEATURES = ("tx-checksum-ip-generic", "tx-tcp-segmentation", "tx-tcp6-segmentation",
                        "tx-tcp-ecn-segmentation")


def bits(*features):
    return sum(spec.bit(feature) for feature in features)


# --- packets ---------------------------------------------------------------------------------------
def ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def udp_frame(dst_mac: bytes, payload: bytes, udp_checksum: str) -> bytes:
    """Guest -> namespace UDP/IPv4 frame; ``udp_checksum``: "full" (right), "partial" (the
    pseudo-header sum a driver leaves for NEEDS_CSUM) or "bad"."""
    src, dst = socket.inet_aton(GUEST_IP), socket.inet_aton(HOST_IP)
    length = UDP_HLEN + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, IP_HLEN + length, 1, 0x4000, 64, socket.IPPROTO_UDP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", 0xFFFF - ones_complement_sum(ip)) + ip[12:]
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    udp = struct.pack("!HHHH", 40000, UDP_PORT, length, 0) + payload
    checksum = {"partial": ones_complement_sum(pseudo),
                "full": 0xFFFF - ones_complement_sum(pseudo + udp),
                "bad": 0x1234}[udp_checksum]
    return dst_mac + GUEST_MAC + b"\x08\x00" + ip + udp[:6] + struct.pack("!H", checksum) + udp[8:]


def needs_csum_header(csum_start: int = ETH_HLEN + IP_HLEN, csum_offset: int = UDP_CHECKSUM_OFFSET,
                      gso_type: int = net.GSO_NONE, hdr_len: int = 0, gso_size: int = 0) -> bytes:
    return net.HEADER.pack(net.HDR_F_NEEDS_CSUM, gso_type, hdr_len, gso_size, csum_start, csum_offset, 0)


def udp_checksum_is_right(frame: bytes) -> bool:
    ip = frame[ETH_HLEN:ETH_HLEN + IP_HLEN]
    udp = frame[ETH_HLEN + IP_HLEN:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_UDP, len(udp))
    return ones_complement_sum(pseudo + udp) == 0xFFFF


# --- the TAP's features, as ethtool -k shows them (SIOCETHTOOL, no ethtool binary needed) -----------
SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS, ETHTOOL_GSSET_INFO, ETHTOOL_GFEATURES = 0x1B, 0x37, 0x3A
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32


def _ethtool(sock: socket.socket, ifname: str, request: ctypes.Array) -> None:
    ifreq = struct.pack("16sP8x", ifname.encode(), ctypes.addressof(request))
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)


def active_features(ifname: str) -> set:
    """Names of the netdev features that are on (call inside the interface's namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        info = ctypes.create_string_buffer(struct.pack("IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0))
        _ethtool(sock, ifname, info)
        (count,) = struct.unpack_from("I", info, 16)
        names = ctypes.create_string_buffer(struct.pack("III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
                                            + bytes(count * ETH_GSTRING_LEN))
        _ethtool(sock, ifname, names)
        blocks = (count + 31) // 32
        features = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_GFEATURES, blocks) + bytes(16 * blocks))
        _ethtool(sock, ifname, features)
    on = set()
    for index in range(count):
        start = 12 + index * ETH_GSTRING_LEN
        name = names.raw[start:start + ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
        (active,) = struct.unpack_from("I", features, 8 + 16 * (index // 32) + 8)
        if active >> (index % 32) & 1:
            on.add(name)
    return on


def disable_ipv6(ifname: str) -> None:
    with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as setting:
        setting.write("1")


# --- the rig ------------------------------------------------------------------------------------------
class TapOffloadRig:
    """A virtio-net card on ``-netdev tap`` in the namespace, the namespace's end at HOST_IP with
    the guest's MAC known for GUEST_IP, and a UDP socket there listening on UDP_PORT."""

    def __init__(self, namespace, net_rig, netdev_options="", drop_features=0):
        self.namespace = namespace
        self.backend = namespace.run(lambda: open_netdev(parse_netdev(f"tap,id=n0,ifname={TAP}{netdev_options}")))
        # No IPv6 on the link: its router solicitations would land in the guest's buffers.
        namespace.run(lambda: disable_ipv6(TAP))
        namespace.ip("link", "set", TAP, "up")
        namespace.ip("addr", "add", f"{HOST_IP}/24", "dev", TAP)
        namespace.ip("neigh", "replace", GUEST_IP, "lladdr", GUEST_MAC.hex(":"), "dev", TAP, "nud", "permanent")
        self.tap_mac = bytes.fromhex(json.loads(namespace.ip("-j", "link", "show", TAP))[0]["address"]
                                     .replace(":", ""))
        self.listener = namespace.run(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.listener.bind((HOST_IP, UDP_PORT))
        self.listener.settimeout(5)
        rig = net_rig(self.backend, drop_features)
        self.device, self.driver, self.accepted = rig.device, rig.driver, rig.accepted
        self.wait_for = rig.wait_for

    def transmit(self, header: bytes, frame: bytes) -> None:
        buf = self.driver.alloc(HDR + len(frame))
        self.device.memory.write(buf, header + frame)
        head = self.driver.submit(1, [Buffer(buf, HDR + len(frame), False)])
        assert self.driver.queues[1].take_used() == [(head, 0)]

    def received_payloads(self) -> list:
        """What reached the UDP socket by now (the TAP's writes are delivered synchronously)."""
        self.listener.setblocking(False)
        payloads = []
        try:
            while True:
                payloads.append(self.listener.recv(65536))
        except BlockingIOError:
            return payloads
        finally:
            self.listener.settimeout(5)

    def tap_features(self) -> set:
        return self.namespace.run(lambda: active_features(TAP)) & set(TAP_OFFLOAD_FEATURES)

    def close(self):
        self.listener.close()


@pytest.fixture
def tap_rig(namespace, net_rig):
    rigs = []

    def make(netdev_options="", drop_features=0):
        rigs.append(TapOffloadRig(namespace, net_rig, netdev_options, drop_features))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


# --- (c) which features, and what the TAP is told ----------------------------------------------------
def test_offloads_offered_with_a_vnet_header_tap_and_tap_follows_the_guest_bits(tap_rig):
    rig = tap_rig()
    assert rig.backend.vnet_header
    assert rig.accepted & bits(*ALL_OFFLOADS) == bits(*ALL_OFFLOADS)
    assert not rig.accepted & bits(F_GUEST_UFO, F_HOST_UFO)
    assert rig.accepted & bits(net.F_MRG_RXBUF)
    assert rig.tap_features() == set(TAP_OFFLOAD_FEATURES)

    # A driver that takes IPv4 segments but neither IPv6 ones nor ECN.
    rig.driver.start(2, bits(net.F_GUEST_TSO6, net.F_GUEST_ECN), vectors=[1, 2])
    assert rig.tap_features() == {"tx-checksum-ip-generic", "tx-tcp-segmentation"}
    rig.driver.start(2, bits(net.F_GUEST_CSUM, net.F_GUEST_TSO4, net.F_GUEST_TSO6, net.F_GUEST_ECN), vectors=[1, 2])
    assert rig.tap_features() == set()  # transmit offloads (CSUM, HOST_*) are not the TAP's to know
    rig.driver.start(2, vectors=[1, 2])
    assert rig.tap_features() == set(TAP_OFFLOAD_FEATURES)
    rig.driver.set_status(0)
    assert rig.tap_features() == set()  # a reset takes them back


def test_no_offloads_with_vnet_hdr_off(tap_rig):
    rig = tap_rig(",vnet_hdr=off")
    assert not rig.backend.vnet_header
    assert not rig.accepted & bits(*ALL_OFFLOADS)
    assert rig.tap_features() == set()
    # Plain frames still cross: the header stays on the guest's side.
    rig.transmit(bytes(HDR), udp_frame(rig.tap_mac, b"plain", "full"))
    assert rig.received_payloads() == [b"plain"]


def test_no_offloads_over_a_stream_backend(net_rig):
    ours, peer = socket.socketpair()
    try:
        rig = net_rig(StreamBackend(ours))
        assert not rig.device.avail_features & bits(*ALL_OFFLOADS)
    finally:
        peer.close()


def test_driver_accepting_an_offload_without_what_it_needs_is_refused(tap_rig):
    rig = tap_rig()
    with pytest.raises(AssertionError, match="refused FEATURES_OK"):
        rig.driver.negotiate(bits(net.F_GUEST_CSUM))  # keeps GUEST_TSO4/6, which need it
    with pytest.raises(AssertionError, match="refused FEATURES_OK"):
        rig.driver.negotiate(bits(net.F_HOST_TSO4, net.F_HOST_TSO6))  # keeps HOST_ECN


# --- (a) transmit: the kernel completes the checksum ---------------------------------------------------
def test_transmit_checksum_offload_reaches_a_udp_socket(tap_rig):
    rig = tap_rig()
    rig.transmit(needs_csum_header(), udp_frame(rig.tap_mac, b"partial checksum", "partial"))
    assert rig.received_payloads() == [b"partial checksum"]
    # Without NEEDS_CSUM the kernel checks the checksum and drops a wrong one...
    rig.transmit(bytes(HDR), udp_frame(rig.tap_mac, b"bad checksum", "bad"))
    # ...and takes the same packet with a right one.
    rig.transmit(bytes(HDR), udp_frame(rig.tap_mac, b"full checksum", "full"))
    assert rig.received_payloads() == [b"full checksum"]
    assert rig.device.tx_dropped == 0 and rig.backend.sent_frames == 3


# --- (b) receive: the header the kernel wrote reaches the guest --------------------------------------
def post_receive_buffer(rig, size=HDR + 2048):
    buf = rig.driver.alloc(size)
    rig.driver.submit(0, [Buffer(buf, HDR, True), Buffer(buf + HDR, size - HDR, True)])
    return buf


def send_to_guest(rig, payload):
    """One UDP datagram from the namespace to the guest."""
    sender = rig.namespace.run(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sender:
        sender.sendto(payload, (GUEST_IP, UDP_PORT))


def is_the_datagram(frame, payload):
    return frame[12:14] == b"\x08\x00" and frame[ETH_HLEN + IP_HLEN + UDP_HLEN:] == payload


def receive_one(rig, payload):
    buf = post_receive_buffer(rig)
    send_to_guest(rig, payload)
    used = []
    while True:  # whatever else the namespace sends first is skipped
        rig.wait_for(lambda: used.extend(rig.driver.queues[0].take_used()) or used, "a received frame")
        _, length = used.pop(0)
        frame = rig.device.memory.read(buf + HDR, length - HDR)
        if is_the_datagram(frame, payload):
            return net.HEADER.unpack(rig.device.memory.read(buf, HDR)), frame
        buf = post_receive_buffer(rig)


def test_receive_with_guest_csum_gets_a_partial_checksum(tap_rig):
    rig = tap_rig()
    header, frame = receive_one(rig, b"to the guest")
    flags, gso_type, _, _, csum_start, csum_offset, num_buffers = header
    # A locally sent UDP packet leaves its checksum to the TAP, which leaves it to the guest.
    assert (flags, gso_type, num_buffers) == (net.HDR_F_NEEDS_CSUM, net.GSO_NONE, 1)
    assert (csum_start, csum_offset) == (ETH_HLEN + IP_HLEN, UDP_CHECKSUM_OFFSET)
    assert frame[0:6] == GUEST_MAC and frame[6:12] == rig.tap_mac
    assert not udp_checksum_is_right(frame)


def test_receive_without_guest_csum_gets_a_full_checksum(tap_rig):
    rig = tap_rig(drop_features=bits(net.F_GUEST_CSUM, net.F_GUEST_TSO4, net.F_GUEST_TSO6, net.F_GUEST_ECN))
    header, frame = receive_one(rig, b"checksummed by the host")
    assert header == (0, net.GSO_NONE, 0, 0, 0, 0, 1)
    assert udp_checksum_is_right(frame)


def test_offloaded_packet_the_driver_did_not_accept_is_dropped(tap_rig):
    """A packet read just before a reset lowered the TAP's offloads."""
    rig = tap_rig(drop_features=bits(net.F_GUEST_CSUM, net.F_GUEST_TSO4, net.F_GUEST_TSO6, net.F_GUEST_ECN))
    buf = post_receive_buffer(rig)
    frame = udp_frame(GUEST_MAC, b"late", "partial")
    rig.device.receive(needs_csum_header() + frame)
    rig.device.receive(net.HEADER.pack(net.HDR_F_DATA_VALID, 0, 0, 0, 0, 0, 0) + frame)
    assert rig.device.rx_dropped_offload == 1
    [(_, length)] = rig.driver.queues[0].take_used()
    # DATA_VALID is only a hint: cleared, since without GUEST_CSUM flags must be zero.
    assert rig.device.memory.read(buf, length) == net.HEADER.pack(0, 0, 0, 0, 0, 0, 1) + frame


# --- (d) hostile headers -------------------------------------------------------------------------------
@pytest.mark.parametrize("header,refused_by", [
    pytest.param(net.HEADER.pack(0, 0x33, 0, 0, 0, 0, 0), "device", id="garbage-gso-type"),
    pytest.param(net.HEADER.pack(net.HDR_F_DATA_VALID, 0, 0, 0, 0, 0, 0), "device", id="receive-only-flag"),
    pytest.param(net.HEADER.pack(0x80, 0, 0, 0, 0, 0, 0), "device", id="unknown-flag"),
    pytest.param(needs_csum_header(csum_start=2000), "kernel", id="csum-start-beyond-frame"),
    pytest.param(needs_csum_header(csum_offset=2000), "kernel", id="csum-offset-beyond-frame"),
    pytest.param(needs_csum_header(gso_type=net.GSO_TCPV4, hdr_len=4000, gso_size=1000), "kernel",
                 id="hdr-len-beyond-frame"),
])
def test_hostile_transmit_headers_are_dropped_and_the_next_frame_goes_through(tap_rig, caplog, header, refused_by):
    rig = tap_rig()
    with caplog.at_level(logging.WARNING, logger="pyhv.virtio.net"):
        for _ in range(2):
            rig.transmit(header, udp_frame(rig.tap_mac, b"hostile", "partial"))
    assert rig.device.tx_dropped == 2
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == (1 if refused_by == "kernel" else 0)  # logged once
    assert rig.backend.dropped_frames == 0  # not counted as the host side's loss
    assert not rig.driver.status() & spec.STATUS_DEVICE_NEEDS_RESET
    rig.transmit(needs_csum_header(), udp_frame(rig.tap_mac, b"good", "partial"))
    assert rig.received_payloads() == [b"good"]


def test_offload_requests_that_were_not_negotiated_are_dropped(tap_rig):
    rig = tap_rig(drop_features=bits(net.F_CSUM, net.F_HOST_TSO4, net.F_HOST_TSO6, net.F_HOST_ECN))
    rig.transmit(needs_csum_header(), udp_frame(rig.tap_mac, b"csum", "partial"))
    rig.transmit(needs_csum_header(gso_type=net.GSO_TCPV4, hdr_len=54, gso_size=1448),
                 udp_frame(rig.tap_mac, b"tso", "partial"))
    assert rig.device.tx_dropped == 2 and rig.backend.sent_frames == 0
    rig.transmit(bytes(HDR), udp_frame(rig.tap_mac, b"plain", "full"))
    assert rig.received_payloads() == [b"plain"]


def test_a_60_kib_packet_from_the_tap_runs_on_through_page_sized_buffers(tap_rig):
    """With MRG_RXBUF a driver posts pages, as Linux does, not 64 KiB chains; a packet as big
    as a TSO segment (one UDP datagram here, the TAP's MTU raised so the kernel sends it in
    one piece) fills as many as it needs."""
    rig = tap_rig()
    assert rig.accepted & bits(net.F_MRG_RXBUF)
    rig.namespace.ip("link", "set", TAP, "mtu", "65000")
    page = 4096
    posted = {}
    for _ in range(40):
        buf = rig.driver.alloc(page)
        posted[rig.driver.submit(0, [Buffer(buf, page, True)])] = buf
    payload = bytes(i * 13 % 256 for i in range(60000))
    send_to_guest(rig, payload)
    used = []
    while True:  # whatever else the namespace sends first is skipped
        rig.wait_for(lambda: used.extend(rig.driver.queues[0].take_used()) or used, "a received packet")
        header = net.HEADER.unpack(rig.device.memory.read(posted[used[0][0]], HDR))
        count = header[-1]
        rig.wait_for(lambda: used.extend(rig.driver.queues[0].take_used()) or len(used) >= count, "its buffers")
        packet = b"".join(rig.device.memory.read(posted[head], length) for head, length in used[:count])
        del used[:count]
        frame = packet[HDR:]
        if is_the_datagram(frame, payload):
            break
    assert count == -(-(HDR + len(frame)) // page) == 15
    assert header[0] == net.HDR_F_NEEDS_CSUM  # the checksum still left to the guest
    assert rig.device.rx_dropped_too_long == 0

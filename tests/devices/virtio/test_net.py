"""virtio-net over virtio-pci: transmit framing on the socket back-ends, receive into guest
buffers from the back-end's thread, and the hostile cases (short headers, offload requests
that were never negotiated, frames longer than the buffers)."""

from __future__ import annotations

import socket
import struct

import pytest

from pyhv.devices.virtio import net, spec
from pyhv.devices.virtio.mock_driver import Buffer
from pyhv.devices.virtio.net import VirtioNet
from pyhv.errors import ConfigError
from pyhv.net.socket import DgramBackend, StreamBackend
from tests.devices.virtio.conftest import wait_for

HDR = net.HEADER.size
FRAME = bytes.fromhex("ffffffffffff525400123456") + b"\x08\x06" + bytes(range(46))


WHOLE_FRAMES = spec.bit(net.F_MRG_RXBUF)  # dropped: one chain per frame


@pytest.fixture
def stream_rig(net_rig):
    ours, peer = socket.socketpair()
    yield net_rig(StreamBackend(ours)), peer
    peer.close()


@pytest.fixture
def whole_frames_rig(net_rig):
    """A stream rig whose driver declined MRG_RXBUF."""
    ours, peer = socket.socketpair()
    yield net_rig(StreamBackend(ours), WHOLE_FRAMES), peer
    peer.close()


def recv_exact(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "peer closed"
        data += chunk
    return data


def test_config_space_and_features(stream_rig):
    rig, _ = stream_rig
    assert bytes(rig.driver.device_config_read(i, 1) for i in range(6)) == bytes.fromhex("525400abcdef")
    assert rig.driver.device_config_read(6, 2) == net.STATUS_LINK_UP
    assert rig.accepted & spec.bit(net.F_MAC) and rig.accepted & spec.bit(net.F_STATUS)
    assert rig.accepted & spec.bit(net.F_MRG_RXBUF)  # offered on every back-end, as QEMU does
    offloads = (0, 1, 7, 8, 10, 11, 17, 22)  # CSUM, GUEST_CSUM, TSO/UFO, CTRL_VQ, MQ
    assert not any(rig.accepted & spec.bit(bit) for bit in offloads)


def test_transmit_frames_reach_the_stream_with_length_prefix(stream_rig):
    rig, peer = stream_rig
    driver = rig.driver
    header = driver.alloc(HDR)
    data = driver.alloc(len(FRAME))
    rig.device.memory.write(data, FRAME)
    # The header and the frame in separate descriptors, as Linux may split them.
    head = driver.submit(1, [Buffer(header, HDR, False), Buffer(data, len(FRAME), False)])
    assert recv_exact(peer, 4) == struct.pack(">I", len(FRAME))
    assert recv_exact(peer, len(FRAME)) == FRAME
    assert driver.queues[1].take_used() == [(head, 0)]
    assert rig.sink.messages[-1] == (0xFEE0_0000, 0x62)


def test_receive_lands_in_guest_buffers_and_raises_msi(stream_rig):
    rig, peer = stream_rig
    driver = rig.driver
    bufs = [driver.alloc(1526) for _ in range(2)]
    for buf in bufs:
        driver.queues[0].publish(driver.queues[0].add_chain([Buffer(buf, 1526, True)]))
    driver.kick(0)
    second = bytes(reversed(FRAME))
    # Two frames in one write, the second split across writes: the reader reassembles.
    stream = struct.pack(">I", len(FRAME)) + FRAME + struct.pack(">I", len(second)) + second
    peer.sendall(stream[:70])
    peer.sendall(stream[70:])
    used = []
    rig.wait_for(lambda: used.extend(driver.queues[0].take_used()) or len(used) == 2, "two received frames")
    assert [length for _, length in used] == [HDR + len(FRAME), HDR + len(second)]
    memory = rig.device.memory
    header = net.HEADER.unpack(memory.read(bufs[0], HDR))
    assert header == (0, 0, 0, 0, 0, 0, 1)
    assert memory.read(bufs[0] + HDR, len(FRAME)) == FRAME
    assert memory.read(bufs[1] + HDR, len(second)) == second
    assert (0xFEE0_0000, 0x61) in rig.sink.messages


def test_frames_wait_for_buffers(stream_rig):
    rig, peer = stream_rig
    peer.sendall(struct.pack(">I", len(FRAME)) + FRAME)
    rig.wait_for(lambda: len(rig.device.backlog) == 1, "the frame in the backlog")
    buf = rig.driver.alloc(2048)
    rig.driver.submit(0, [Buffer(buf, 2048, True)])
    assert [length for _, length in rig.driver.queues[0].take_used()] == [HDR + len(FRAME)]
    assert rig.device.memory.read(buf + HDR, len(FRAME)) == FRAME


def test_frame_longer_than_the_buffer_is_dropped_and_the_buffer_kept(whole_frames_rig):
    rig, peer = whole_frames_rig
    assert not rig.accepted & WHOLE_FRAMES
    buf = rig.driver.alloc(HDR + 64)
    rig.driver.submit(0, [Buffer(buf, HDR + 64, True)])
    big = FRAME + bytes(200)
    peer.sendall(struct.pack(">I", len(big)) + big + struct.pack(">I", len(FRAME)) + FRAME)
    used = []
    rig.wait_for(lambda: used.extend(rig.driver.queues[0].take_used()) or used, "the small frame")
    assert [length for _, length in used] == [HDR + len(FRAME)]
    assert rig.device.rx_dropped_too_long == 1
    assert rig.device.memory.read(buf + HDR, len(FRAME)) == FRAME


def test_backlog_is_bounded(stream_rig):
    rig, _ = stream_rig
    for _ in range(net.MAX_BACKLOG_FRAMES + 5):
        rig.device.receive(FRAME)
    assert len(rig.device.backlog) == net.MAX_BACKLOG_FRAMES
    assert rig.device.rx_dropped_backlog == 5


def test_transmit_chain_shorter_than_the_header_needs_reset(stream_rig):
    rig, _ = stream_rig
    rig.driver.submit(1, [Buffer(rig.driver.alloc(4), 4, False)])
    assert rig.driver.status() & spec.STATUS_DEVICE_NEEDS_RESET


@pytest.mark.parametrize("header,frame", [
    (net.HEADER.pack(net.HDR_F_NEEDS_CSUM, 0, 0, 0, 14, 16, 0), FRAME),  # checksum offload never negotiated
    (net.HEADER.pack(0, 1, 0, 0, 0, 0, 0), FRAME),  # GSO TCPv4 never negotiated
    (bytes(HDR), b"\x01\x02"),  # a runt shorter than an Ethernet header
])
def test_bad_transmit_frames_are_dropped(stream_rig, header, frame):
    rig, peer = stream_rig
    buf = rig.driver.alloc(HDR + len(frame))
    rig.device.memory.write(buf, header + frame)
    head = rig.driver.submit(1, [Buffer(buf, HDR + len(frame), False)])
    assert rig.driver.queues[1].take_used() == [(head, 0)]
    assert rig.device.tx_dropped == 1
    assert not rig.driver.status() & spec.STATUS_DEVICE_NEEDS_RESET
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(1)


def test_giant_transmit_chain_is_dropped_without_copying(stream_rig):
    rig, _ = stream_rig
    size = HDR + net.MAX_FRAME_SIZE + 1
    buf = rig.driver.alloc(size)
    rig.driver.submit(1, [Buffer(buf, size, False)])
    assert rig.device.tx_dropped == 1


def test_dgram_backend_one_frame_per_datagram(net_rig):
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rig = net_rig(DgramBackend(ours))
    try:
        buf = rig.driver.alloc(HDR + len(FRAME))
        rig.device.memory.write(buf + HDR, FRAME)
        rig.driver.submit(1, [Buffer(buf, HDR + len(FRAME), False)])
        assert peer.recv(4096) == FRAME
        rx = rig.driver.alloc(2048)
        rig.driver.submit(0, [Buffer(rx, 2048, True)])
        peer.send(FRAME[::-1])
        used = []
        rig.wait_for(lambda: used.extend(rig.driver.queues[0].take_used()) or used, "a datagram")
        assert rig.device.memory.read(rx + HDR, len(FRAME)) == FRAME[::-1]
    finally:
        peer.close()


@pytest.mark.parametrize("text,message", [
    ("52:54:00:12:34", "not a MAC address"),
    ("52-54-00-12-34-56", "not a MAC address"),
    ("01:00:5e:00:00:01", "multicast"),
])
def test_bad_mac_addresses(text, message):
    with pytest.raises(ConfigError, match=message):
        net.parse_mac(text)


def test_mac_must_be_six_bytes(memory):
    ours, peer = socket.socketpair()
    backend = StreamBackend(ours)
    with pytest.raises(ConfigError, match="6 bytes"):
        VirtioNet(memory, backend, b"\x52\x54")
    backend.close()
    peer.close()


@pytest.mark.parametrize("kind", ["mmio", "pci"])
def test_packed_rings_transmit_receive_and_keep_a_buffer_too_small(memory, plug_on, kind):
    ours, peer = socket.socketpair()
    device = VirtioNet(memory, StreamBackend(ours), packed=True)
    rig = plug_on(device, kind)
    driver = rig.driver
    try:
        assert rig.start(2, WHOLE_FRAMES) >> spec.F_RING_PACKED & 1
        device.start_backend()
        out = driver.alloc(HDR + len(FRAME))
        memory.write(out + HDR, FRAME)
        head = driver.submit(1, [Buffer(out, HDR, False), Buffer(out + HDR, len(FRAME), False)])
        assert recv_exact(peer, 4 + len(FRAME)) == struct.pack(">I", len(FRAME)) + FRAME
        assert driver.queues[1].take_used() == [(head, 0)]
        # One receive buffer too small for the first frame: the frame is dropped, and the
        # buffer (given back to the ring) takes the second, which fits.
        small = driver.alloc(HDR + 64)
        small_head = driver.submit(0, [Buffer(small, HDR + 64, True)])
        big = FRAME + bytes(200)
        peer.sendall(struct.pack(">I", len(big)) + big + struct.pack(">I", len(FRAME)) + FRAME)
        used = []
        wait_for(lambda: used.extend(driver.queues[0].take_used()) or used, "the small frame")
        assert used == [(small_head, HDR + len(FRAME))] and device.rx_dropped_too_long == 1
        assert memory.read(small + HDR, len(FRAME)) == FRAME
        # And the ring goes on from there.
        rx = driver.alloc(2048)
        rx_head = driver.submit(0, [Buffer(rx, 2048, True)])
        peer.sendall(struct.pack(">I", len(FRAME)) + FRAME[::-1])
        used = []
        wait_for(lambda: used.extend(driver.queues[0].take_used()) or used, "a second frame")
        assert used == [(rx_head, HDR + len(FRAME))] and memory.read(rx + HDR, len(FRAME)) == FRAME[::-1]
    finally:
        peer.close()

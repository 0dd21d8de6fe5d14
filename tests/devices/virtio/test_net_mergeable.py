"""virtio-net with VIRTIO_NET_F_MRG_RXBUF (virtio 1.2, 5.1.6.3-5.1.6.4): a received packet runs
on through several receive chains, num_buffers in the first one's header says how many, over
split and packed rings behind both transports; and the hostile and edge cases (chains without
room, a packet the whole ring could not hold, a driver that declined the feature)."""

from __future__ import annotations

import socket

import pytest

from pyhv.devices.virtio import net, spec
from pyhv.devices.virtio.mock_driver import Buffer
from pyhv.devices.virtio.net import VirtioNet
from pyhv.net.socket import StreamBackend

HDR = net.HEADER.size
CHAIN = 1024
BIG_FRAME = bytes.fromhex("525400123456525400abcdef0800") + bytes(i * 7 % 251 for i in range(2986))
assert len(BIG_FRAME) == 3000
SMALL_FRAME = bytes.fromhex("525400123456525400abcdef0806") + bytes(range(46))


class MergeRig:
    """A virtio-net device whose driver is past DRIVER_OK; frames go in through receive()."""

    def __init__(self, memory, plug_on, kind, packed, drop, size):
        self.peer, ours = socket.socketpair()
        self.device = VirtioNet(memory, StreamBackend(ours), packed=packed)
        self.memory = memory
        self.plugged = plug_on(self.device, kind)
        self.accepted = self.plugged.start(2, drop, size)
        assert bool(self.accepted >> spec.F_RING_PACKED & 1) == packed
        self.driver = self.plugged.driver
        self.rx = self.driver.queues[0]

    def post(self, length=CHAIN, buffers=None):
        """A receive chain: one writable buffer of ``length`` bytes unless ``buffers`` says more."""
        if buffers is None:
            buffers = [Buffer(self.driver.alloc(length), length, True)]
        return self.driver.submit(0, buffers), buffers

    def close(self):
        self.peer.close()


@pytest.fixture(params=[False, True], ids=["split", "packed"])
def merge_rig(request, memory, plug_on, transport_kind):
    """``merge_rig(drop=0, size=None)`` -> :class:`MergeRig` on the ring layout and transport
    of the test's parameters."""
    rigs = []

    def make(drop=0, size=None):
        rigs.append(MergeRig(memory, plug_on, transport_kind, request.param, drop, size))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def read_packet(rig, posted, used):
    """The bytes the device wrote, chain after chain, as the used lengths say."""
    buffers = dict(posted)
    data = b""
    for head, length in used:
        for buf in buffers[head]:
            take = min(length, buf.length)
            data += rig.memory.read(buf.gpa, take)
            length -= take
        assert length == 0
    return data


def test_a_frame_runs_on_through_three_chains(merge_rig):
    rig = merge_rig()
    assert rig.accepted & spec.bit(net.F_MRG_RXBUF)
    posted = [rig.post() for _ in range(4)]
    rig.plugged.take_interrupt()
    rig.device.receive(BIG_FRAME)
    used = rig.rx.take_used()
    assert used == [(posted[0][0], CHAIN), (posted[1][0], CHAIN), (posted[2][0], HDR + len(BIG_FRAME) - 2 * CHAIN)]
    data = read_packet(rig, posted, used)
    assert net.HEADER.unpack(data[:HDR]) == (0, 0, 0, 0, 0, 0, 3)
    assert data[HDR:] == BIG_FRAME
    assert rig.plugged.take_interrupt()
    # The fourth chain is still there for the next frame, alone in its header's count.
    rig.device.receive(SMALL_FRAME)
    used = rig.rx.take_used()
    assert used == [(posted[3][0], HDR + len(SMALL_FRAME))]
    assert read_packet(rig, posted, used) == net.HEADER.pack(0, 0, 0, 0, 0, 0, 1) + SMALL_FRAME


def test_a_frame_waits_until_enough_chains_are_posted(merge_rig):
    rig = merge_rig()
    posted = [rig.post()]
    rig.device.receive(BIG_FRAME)
    posted.append(rig.post())  # the kick's pass takes it, and the frame still waits
    assert rig.rx.take_used() == [] and len(rig.device.backlog) == 1
    assert rig.device.rx_dropped_too_long == 0
    # The driver posts the third chain and kicks only if the device asked for it, as Linux
    # decides (with EVENT_IDX: whether the index stepped over avail_event).
    buffers = [Buffer(rig.driver.alloc(CHAIN), CHAIN, True)]
    head = rig.rx.add_chain(buffers)
    rig.rx.publish(head)
    posted.append((head, buffers))
    assert rig.rx.kick_needed(bool(rig.accepted & spec.bit(spec.F_EVENT_IDX)))
    rig.driver.kick(0)
    used = rig.rx.take_used()
    assert [head for head, _ in used] == [head for head, _ in posted]
    data = read_packet(rig, posted, used)
    assert data[HDR:] == BIG_FRAME and net.HEADER.unpack(data[:HDR])[-1] == 3
    assert not rig.device.backlog and not rig.plugged.needs_reset()


def test_without_mrg_rxbuf_a_frame_takes_one_chain_or_is_dropped(merge_rig):
    rig = merge_rig(drop=spec.bit(net.F_MRG_RXBUF))
    assert not rig.accepted & spec.bit(net.F_MRG_RXBUF)
    posted = [rig.post() for _ in range(3)]
    rig.device.receive(BIG_FRAME)
    assert rig.rx.take_used() == [] and rig.device.rx_dropped_too_long == 1
    rig.device.receive(SMALL_FRAME)
    used = rig.rx.take_used()
    assert used == [(posted[0][0], HDR + len(SMALL_FRAME))]
    assert read_packet(rig, posted, used) == net.HEADER.pack(0, 0, 0, 0, 0, 0, 1) + SMALL_FRAME


def test_a_frame_the_whole_ring_cannot_hold_is_dropped_and_the_chains_kept(merge_rig):
    rig = merge_rig(size=2)
    posted = [rig.post() for _ in range(2)]  # every slot: 2 KiB, the frame needs 3 KiB
    rig.device.receive(BIG_FRAME)
    assert rig.device.rx_dropped_too_long == 1 and not rig.device.backlog
    assert rig.rx.take_used() == []
    rig.device.receive(SMALL_FRAME)
    used = rig.rx.take_used()
    assert used == [(posted[0][0], HDR + len(SMALL_FRAME))]
    assert read_packet(rig, posted, used)[HDR:] == SMALL_FRAME
    assert not rig.plugged.needs_reset()


def test_backlog_stays_bounded_while_a_frame_waits(merge_rig):
    rig = merge_rig()
    rig.post()
    for _ in range(net.MAX_BACKLOG_FRAMES + 3):
        rig.device.receive(BIG_FRAME)
    assert len(rig.device.backlog) == net.MAX_BACKLOG_FRAMES and rig.device.rx_dropped_backlog == 3
    assert rig.rx.take_used() == []


def test_a_first_chain_shorter_than_the_header_and_an_empty_one_still_take_the_packet(merge_rig):
    """The spec forbids both; the device neither stops nor writes past what it reports."""
    rig = merge_rig()
    posted = [rig.post(8), rig.post(buffers=[Buffer(rig.driver.alloc(16), 0, True)]), rig.post()]
    rig.device.receive(SMALL_FRAME)
    used = rig.rx.take_used()
    assert used == [(posted[0][0], 8), (posted[1][0], 0), (posted[2][0], HDR - 8 + len(SMALL_FRAME))]
    data = read_packet(rig, posted, used)
    assert net.HEADER.unpack(data[:HDR])[-1] == 3 and data[HDR:] == SMALL_FRAME
    assert not rig.plugged.needs_reset()


def test_a_chain_without_a_writable_buffer_needs_reset(merge_rig):
    rig = merge_rig()
    rig.post(buffers=[Buffer(rig.driver.alloc(CHAIN), CHAIN, False)])
    rig.post()
    rig.device.receive(SMALL_FRAME)
    assert rig.plugged.needs_reset()

"""virtio-blk, -rng, -console and -net over packed rings, through both transports (virtio-mmio
and virtio-pci), driven by the mock drivers as Linux drives a device that offers
VIRTIO_F_RING_PACKED; and the hostile rings and queue set-ups that end in NEEDS_RESET."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from pyhv.block.backend import open_image
from pyhv.bus import Bus
from pyhv.chardev import BufferBackend
from pyhv.devices.pci.builder import PciBuilder
from pyhv.devices.pci.mock_driver import MockVirtioPciDriver
from pyhv.devices.pci.sinks import RecordingMsiSink
from pyhv.devices.virtio import blk, console, mmio, net, spec
from pyhv.devices.virtio import pci as vpci
from pyhv.devices.virtio.blk import VirtioBlock
from pyhv.devices.virtio.console import VirtioConsole
from pyhv.devices.virtio.mmio import VirtioMmioTransport
from pyhv.devices.virtio.mock_driver import Buffer, MockMmioDriver, MockPackedQueue
from pyhv.devices.virtio.net import VirtioNet
from pyhv.devices.virtio.packed import DESC_F_AVAIL, EVENT_FLAG_DESC, EVENT_FLAG_DISABLE, PackedQueue
from pyhv.devices.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, SplitQueue
from pyhv.devices.virtio.rng import VirtioRng
from pyhv.irq import RecordingIrqLine
from pyhv.net.socket import StreamBackend

RAM = 4 << 20
PACKED = spec.bit(spec.F_RING_PACKED)
RUNNING = spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK | spec.STATUS_DRIVER_OK
A = DESC_F_AVAIL


class Plugged:
    """A device behind the virtio-mmio or the virtio-pci transport (INTx, no MSI-X), with
    that transport's mock driver and the few things the tests need from either."""

    def __init__(self, memory, device, transport: str) -> None:
        self.device = device
        self.memory = memory
        self.transport = transport
        if transport == "mmio":
            self.irq = RecordingIrqLine()
            self.mmio_transport = VirtioMmioTransport(device, self.irq)
            self.driver = MockMmioDriver(self.mmio_transport, memory)
        else:
            pio, bus = Bus("pio"), Bus("mmio")
            self.builder = PciBuilder(pio, bus, memory, lambda gsi: RecordingIrqLine(), RecordingMsiSink())
            placed = self.builder.add_virtio(device, "test")
            self.driver = MockVirtioPciDriver(pio, bus, memory, placed.slot)

    def set_status(self, value: int) -> None:
        if self.transport == "mmio":
            self.driver.write32(mmio.STATUS, value)
        else:
            self.driver.set_status(value)

    def start(self, queue_count: int, drop: int = 0, size=None) -> int:
        accepted = self.driver.negotiate(drop)
        for index in range(queue_count):
            self.driver.setup_queue(index, size)
        self.set_status(RUNNING)
        return accepted

    def program_queue(self, index: int, size: int, addresses) -> None:
        """Queue set-up register by register, addresses as given (misplaced ones included)."""
        if self.transport == "mmio":
            self.driver.write32(mmio.QUEUE_SEL, index)
            self.driver.write32(mmio.QUEUE_NUM, size)
            for low, address in zip((mmio.QUEUE_DESC_LOW, mmio.QUEUE_DRIVER_LOW, mmio.QUEUE_DEVICE_LOW), addresses):
                self.driver.write32(low, address & 0xFFFF_FFFF)
                self.driver.write32(low + 4, address >> 32)
            self.driver.write32(mmio.QUEUE_READY, 1)
        else:
            self.driver.common_write(vpci.QUEUE_SELECT, 2, index)
            self.driver.common_write(vpci.QUEUE_SIZE, 2, size)
            for offset, address in zip((vpci.QUEUE_DESC, vpci.QUEUE_DRIVER, vpci.QUEUE_DEVICE), addresses):
                self.driver.common_write(offset, 4, address & 0xFFFF_FFFF)
                self.driver.common_write(offset + 4, 4, address >> 32)
            self.driver.common_write(vpci.QUEUE_ENABLE, 2, 1)

    def needs_reset(self) -> bool:
        return bool(self.driver.status() & spec.STATUS_DEVICE_NEEDS_RESET)

    def take_interrupt(self) -> int:
        """The interrupt causes pending (and acknowledged) at the transport."""
        if self.transport == "mmio":
            return self.driver.ack_interrupts()
        return self.driver.read_isr()

    def close(self) -> None:
        self.device.close()


TRANSPORTS = ["mmio", "pci"]


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(range(256)) * 256)  # 64 KiB
    return path


def blk_request(rig, rtype, sector=0, out=b"", in_length=0, indirect=False):
    """Submit one request and wait for nothing (the queue runs on the kick): (status, used, data)."""
    driver = rig.driver
    header = driver.alloc(16)
    rig.memory.write(header, struct.pack("<IIQ", rtype, 0, sector))
    buffers = [Buffer(header, 16, False)]
    if out:
        gpa = driver.alloc(len(out))
        rig.memory.write(gpa, out)
        buffers.append(Buffer(gpa, len(out), False))
    data = driver.alloc(in_length) if in_length else None
    if in_length:
        buffers.append(Buffer(data, in_length, True))
    status = driver.alloc(1, fill=0xFF)
    buffers.append(Buffer(status, 1, True))
    head = driver.submit(0, buffers, indirect=indirect)
    used = driver.queues[0].take_used()
    assert [h for h, _ in used] == [head]
    return rig.memory.read_u8(status), used[0][1], rig.memory.read(data, in_length) if in_length else b""


# --- negotiation ---------------------------------------------------------------------------
def test_packed_rings_are_offered_only_with_packed_on(memory, transport):
    rig = Plugged(memory, VirtioRng(memory), transport)
    assert not rig.driver.features() & PACKED
    rig = Plugged(memory, VirtioRng(memory, packed=True), transport)
    assert rig.driver.features() & PACKED


def test_the_queues_follow_the_layout_the_driver_accepts(memory, transport):
    device = VirtioRng(memory, packed=True)
    rig = Plugged(memory, device, transport)
    assert rig.start(1) & PACKED
    assert type(device.queues[0]) is PackedQueue and isinstance(rig.driver.queues[0], MockPackedQueue)
    gpa = rig.driver.alloc(16)
    head = rig.driver.submit(0, [Buffer(gpa, 16, True)])
    assert rig.driver.queues[0].take_used() == [(head, 16)]
    # A driver that resets and declines the feature gets split rings again.
    assert not rig.start(1, drop=PACKED) & PACKED
    assert type(device.queues[0]) is SplitQueue
    head = rig.driver.submit(0, [Buffer(gpa, 16, True)])
    assert rig.driver.queues[0].take_used() == [(head, 16)]


# --- devices ------------------------------------------------------------------------------------
@pytest.mark.parametrize("indirect", [False, True])
def test_blk_write_then_read(memory, transport, image, indirect):
    rig = Plugged(memory, VirtioBlock(memory, open_image(str(image), "raw"), serial="packed-0", packed=True),
                  transport)
    rig.start(1)
    try:
        payload = os.urandom(1536)
        assert blk_request(rig, blk.T_OUT, sector=10, out=payload, indirect=indirect)[:2] == (blk.S_OK, 1)
        assert image.read_bytes()[10 * 512:13 * 512] == payload
        assert blk_request(rig, blk.T_IN, sector=10, in_length=1536, indirect=indirect) == (blk.S_OK, 1537, payload)
        assert blk_request(rig, blk.T_IN, sector=3, in_length=512, indirect=indirect)[2] == bytes(range(256)) * 2
        assert blk_request(rig, blk.T_FLUSH)[0] == blk.S_OK
        status, used, serial = blk_request(rig, blk.T_GET_ID, in_length=20)
        assert (status, used, serial.rstrip(b"\0")) == (blk.S_OK, 21, b"packed-0")
        assert rig.take_interrupt() & spec.INT_USED_BUFFER
    finally:
        rig.close()


def test_blk_on_a_ring_that_is_no_power_of_two_over_many_laps(memory, transport, image):
    """A 100-slot ring, three-slot requests, twelve in flight per kick: 20 kicks go round
    the ring seven times, and every read brings back its own sectors."""
    rig = Plugged(memory, VirtioBlock(memory, open_image(str(image), "raw"), packed=True), transport)
    rig.start(1, size=100)
    disk = image.read_bytes()
    queue = rig.driver.queues[0]
    try:
        for round_number in range(20):
            requests = []
            for k in range(12):
                sector = (round_number * 12 + k) % 128
                header, data, status = rig.driver.alloc(16), rig.driver.alloc(512), rig.driver.alloc(1, 0xFF)
                memory.write(header, struct.pack("<IIQ", blk.T_IN, 0, sector))
                head = queue.add_chain([Buffer(header, 16, False), Buffer(data, 512, True), Buffer(status, 1, True)])
                queue.publish(head)
                requests.append((head, sector, data, status))
            rig.driver.kick(0)
            used = queue.take_used()
            assert sorted(used) == sorted((head, 513) for head, *_ in requests)
            for _head, sector, data, status in requests:
                assert memory.read_u8(status) == blk.S_OK
                assert memory.read(data, 512) == disk[sector * 512:(sector + 1) * 512]
        assert rig.device.queues[0].used_wrap == 20 * 12 * 3 // 100 % 2 ^ 1
    finally:
        rig.close()


def test_rng(memory, transport):
    rig = Plugged(memory, VirtioRng(memory, packed=True), transport)
    rig.start(1)
    first, second = rig.driver.alloc(32), rig.driver.alloc(32)
    head = rig.driver.submit(0, [Buffer(first, 32, True), Buffer(second, 32, True)])
    assert rig.driver.queues[0].take_used() == [(head, 64)]
    assert len(set(memory.read(first, 32) + memory.read(second, 32))) > 16
    head = rig.driver.submit(0, [Buffer(first, 8, True)], indirect=True)
    assert rig.driver.queues[0].take_used() == [(head, 8)]
    assert rig.take_interrupt() & spec.INT_USED_BUFFER


def test_console_output_and_input(memory, transport):
    backend = BufferBackend()
    device = VirtioConsole(memory, backend, packed=True)
    backend.start(device.receive)
    rig = Plugged(memory, device, transport)
    assert rig.start(2) & PACKED
    text = rig.driver.alloc(12)
    memory.write(text, b"hello packed")
    head = rig.driver.submit(console.TRANSMIT_QUEUE, [Buffer(text, 5, False), Buffer(text + 5, 7, False)])
    assert backend.output == b"hello packed"
    assert rig.driver.queues[console.TRANSMIT_QUEUE].take_used() == [(head, 0)]
    backend.feed(b"abcdefghij")  # before any receive buffer: it waits
    receive = rig.driver.queues[console.RECEIVE_QUEUE]
    first, second = rig.driver.alloc(4), rig.driver.alloc(16)
    heads = []
    for gpa, size in ((first, 4), (second, 16)):
        heads.append(receive.add_chain([Buffer(gpa, size, True)]))
        receive.publish(heads[-1])
    rig.driver.kick(console.RECEIVE_QUEUE)
    assert receive.take_used() == [(heads[0], 4), (heads[1], 6)]
    assert memory.read(first, 4) + memory.read(second, 6) == b"abcdefghij"
    backend.feed(b"late")  # no buffer left: waits again
    third = rig.driver.alloc(8)
    head = rig.driver.submit(console.RECEIVE_QUEUE, [Buffer(third, 8, True)])
    assert receive.take_used() == [(head, 4)] and memory.read(third, 4) == b"late"


HDR = net.HEADER.size
FRAME = bytes.fromhex("ffffffffffff525400123456") + b"\x08\x06" + bytes(range(46))


def wait_for(predicate, what, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def recv_exact(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "peer closed"
        data += chunk
    return data


def test_net_transmit_receive_and_a_frame_too_long_for_the_buffer(memory, transport):
    ours, peer = socket.socketpair()
    device = VirtioNet(memory, StreamBackend(ours), packed=True)
    rig = Plugged(memory, device, transport)
    try:
        assert rig.start(2) & PACKED
        device.start_backend()
        out = rig.driver.alloc(HDR + len(FRAME))
        memory.write(out + HDR, FRAME)
        head = rig.driver.submit(1, [Buffer(out, HDR, False), Buffer(out + HDR, len(FRAME), False)])
        assert recv_exact(peer, 4 + len(FRAME)) == struct.pack(">I", len(FRAME)) + FRAME
        assert rig.driver.queues[1].take_used() == [(head, 0)]
        # One receive buffer too small for the first frame: dropped, and the buffer waits
        # for the second, which fits.
        small = rig.driver.alloc(HDR + 64)
        small_head = rig.driver.submit(0, [Buffer(small, HDR + 64, True)])
        big = FRAME + bytes(200)
        peer.sendall(struct.pack(">I", len(big)) + big + struct.pack(">I", len(FRAME)) + FRAME)
        used = []
        wait_for(lambda: used.extend(rig.driver.queues[0].take_used()) or used, "the small frame")
        assert used == [(small_head, HDR + len(FRAME))]
        assert device.rx_dropped_too_long == 1
        assert memory.read(small + HDR, len(FRAME)) == FRAME
        # And the ring goes on from there.
        rx = rig.driver.alloc(2048)
        rx_head = rig.driver.submit(0, [Buffer(rx, 2048, True)])
        peer.sendall(struct.pack(">I", len(FRAME)) + FRAME[::-1])
        used = []
        wait_for(lambda: used.extend(rig.driver.queues[0].take_used()) or used, "a second frame")
        assert used == [(rx_head, HDR + len(FRAME))] and memory.read(rx + HDR, len(FRAME)) == FRAME[::-1]
    finally:
        rig.close()
        peer.close()


# --- notifications ----------------------------------------------------------------------------------
def test_interrupts_follow_the_driver_event_suppression_area(memory, transport):
    rig = Plugged(memory, VirtioRng(memory, packed=True), transport)
    accepted = rig.start(1)
    assert accepted & spec.bit(spec.F_EVENT_IDX)
    queue = rig.driver.queues[0]
    gpa = rig.driver.alloc(8)
    queue.set_no_interrupt(True)
    rig.driver.submit(0, [Buffer(gpa, 8, True)])
    assert queue.take_used() and not rig.take_interrupt()
    # EVENT_IDX's DESC mode: an interrupt when the slot two ahead of the driver is used.
    position, wrap = queue.used_position()
    queue.set_driver_event(EVENT_FLAG_DESC, position + 2, wrap)
    seen = []
    for _ in range(4):
        rig.driver.submit(0, [Buffer(gpa, 8, True)])
        seen.append(bool(rig.take_interrupt() & spec.INT_USED_BUFFER))
    assert seen == [False, False, True, False]


def test_requests_added_during_a_drain_need_no_kick(memory, image):
    device = VirtioBlock(memory, open_image(str(image), "raw"), packed=True)
    rig = Plugged(memory, device, "mmio")
    rig.start(1)
    queue = rig.driver.queues[0]
    seen = []
    original = device.backend.readv

    def chain(sector):
        header = rig.driver.alloc(16)
        memory.write(header, struct.pack("<IIQ", blk.T_IN, 0, sector))
        return queue.add_chain([Buffer(header, 16, False), Buffer(rig.driver.alloc(512), 512, True),
                                Buffer(rig.driver.alloc(1), 1, True)])

    def readv(offset, buffers):
        seen.append(offset)
        if len(seen) == 1:
            queue.publish(chain(2))
            seen.append(queue.kick_needed(True))
            seen.append(queue.device_event()[1])
        original(offset, buffers)

    device.backend.readv = readv
    queue.publish(chain(1))
    assert queue.kick_needed(True)
    rig.driver.kick(0)
    assert seen == [512, False, EVENT_FLAG_DISABLE, 1024]
    assert [length for _head, length in queue.take_used()] == [513, 513]
    assert rig.mmio_transport.notify_writes == 1
    assert queue.device_event() == (6 | 1 << 15, EVENT_FLAG_DESC)  # idle: kick me at slot 6
    queue.publish(chain(3))
    assert queue.kick_needed(True)
    rig.close()


# --- hostile rings and set-ups -----------------------------------------------------------------------
def _endless(q):
    for index in range(q.size):
        q.write_descriptor(index, 0x200000, 8, A | DESC_F_NEXT)


HOSTILE = {
    "buffer outside RAM": lambda q: q.write_descriptor(0, RAM - 4, 8, A),
    "oversized length": lambda q: q.write_descriptor(0, 0x200000, 0xFFFF_0000, A),
    "NEXT never cleared": _endless,
    "buffer id past the queue size": lambda q: q.write_descriptor(0, 0x200000, 8, A, buffer_id=q.size),
    "indirect table of 20 bytes": lambda q: q.write_descriptor(0, 0x200000, 20, A | DESC_F_INDIRECT),
    "nested indirect": lambda q: (q.write_descriptor(0, 0x200000, 16, A | DESC_F_INDIRECT),
                                  q.write_descriptor(0, 0x210000, 16, DESC_F_INDIRECT, table=0x200000)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_ring_needs_reset_and_a_reset_recovers(memory, transport, case):
    rig = Plugged(memory, VirtioRng(memory, packed=True), transport)
    rig.start(1)
    queue = rig.driver.queues[0]
    HOSTILE[case](queue)
    rig.driver.kick(0)
    rig.driver.kick(0)  # nothing more happens, nothing raises
    assert rig.needs_reset()
    assert rig.take_interrupt() & spec.INT_CONFIG_CHANGE
    assert queue.take_used() == []
    # The host is intact: after a reset and a fresh start the device works.
    rig.start(1)
    assert not rig.needs_reset()
    gpa = rig.driver.alloc(8)
    head = rig.driver.submit(0, [Buffer(gpa, 8, True)])
    assert rig.driver.queues[0].take_used() == [(head, 8)]


@pytest.mark.parametrize("size, broken", [(0, True), (65, True), (0xFFFF, True), (3, False), (64, False)])
def test_queue_size_zero_or_above_the_maximum_needs_reset(memory, transport, size, broken):
    device = VirtioRng(memory, packed=True)
    rig = Plugged(memory, device, transport)
    rig.start(1, size=size)
    assert rig.needs_reset() is broken and device.active is not broken
    if not broken:  # any size up to the maximum, power of two or not
        head = rig.driver.submit(0, [Buffer(rig.driver.alloc(8), 8, True)])
        assert rig.driver.queues[0].take_used() == [(head, 8)]


@pytest.mark.parametrize("addresses", [
    (0x10008, 0x11000, 0x11004),  # ring only 8-byte aligned
    (0x10000, 0x11002, 0x11004),  # driver area only 2-byte aligned
    (0x10000, 0x11000, 0x11001),  # device area unaligned
    (RAM - 0x200, 0x11000, 0x11004),  # ring running past RAM
    (0x10000, 0x11000, 1 << 36),  # device area far outside RAM
])
def test_misplaced_areas_need_reset(memory, transport, addresses):
    device = VirtioRng(memory, packed=True)
    rig = Plugged(memory, device, transport)
    rig.driver.negotiate()
    rig.program_queue(0, 64, addresses)
    rig.set_status(RUNNING)
    assert rig.needs_reset() and not device.active
    assert rig.take_interrupt() & spec.INT_CONFIG_CHANGE


def test_the_same_areas_well_placed_work(memory, transport):
    device = VirtioRng(memory, packed=True)
    rig = Plugged(memory, device, transport)
    rig.driver.negotiate()
    rig.program_queue(0, 64, (0x10000, 0x11000, 0x11004))
    rig.set_status(RUNNING)
    assert not rig.needs_reset() and device.active


def test_pci_msix_vectors_follow_the_queues_once_they_are_packed(memory):
    """The device swaps its queue objects at FEATURES_OK; each queue keeps its vector."""
    backend = BufferBackend()
    device = VirtioConsole(memory, backend, packed=True)
    backend.start(device.receive)
    pio, bus = Bus("pio"), Bus("mmio")
    sink = RecordingMsiSink()
    builder = PciBuilder(pio, bus, memory, lambda gsi: RecordingIrqLine(), sink)
    driver = MockVirtioPciDriver(pio, bus, memory, builder.add_virtio(device, "test").slot)
    for vector in range(3):
        driver.program_vector(vector, 0xFEE0_0000, 0x70 + vector)
    driver.set_msix(True)
    assert driver.start(2, vectors=[1, 2]) & PACKED
    text = driver.alloc(2)
    driver.submit(console.TRANSMIT_QUEUE, [Buffer(text, 2, False)])
    assert sink.messages == [(0xFEE0_0000, 0x72)]
    driver.submit(console.RECEIVE_QUEUE, [Buffer(driver.alloc(8), 8, True)])
    backend.feed(b"x")
    assert sink.messages[-1] == (0xFEE0_0000, 0x71)

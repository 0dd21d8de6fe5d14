"""virtio-rng, -console and -blk over packed rings, through both transports (virtio-mmio and
virtio-pci), driven by the mock drivers as Linux drives a device that offers
VIRTIO_F_RING_PACKED; and the hostile rings and queue set-ups that end in NEEDS_RESET.
(test_blk.py and test_net.py have their own packed-ring round trips.)"""

from __future__ import annotations

import struct

import pytest

from pyhv.block.backend import open_image
from pyhv.bus import Bus
from pyhv.chardev import BufferBackend
from pyhv.devices.pci.builder import PciBuilder
from pyhv.devices.pci.mock_driver import MockVirtioPciDriver
from pyhv.devices.pci.sinks import RecordingMsiSink
from pyhv.devices.virtio import blk, console, spec
from pyhv.devices.virtio.blk import VirtioBlock
from pyhv.devices.virtio.console import VirtioConsole
from pyhv.devices.virtio.mock_driver import Buffer, MockPackedQueue
from pyhv.devices.virtio.packed import DESC_F_AVAIL, EVENT_FLAG_DESC, EVENT_FLAG_DISABLE, PackedQueue
from pyhv.devices.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, SplitQueue
from pyhv.devices.virtio.rng import VirtioRng
from pyhv.irq import RecordingIrqLine

RAM = 4 << 20
PACKED = spec.bit(spec.F_RING_PACKED)
A = DESC_F_AVAIL


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(range(256)) * 256)  # 64 KiB
    return path


# --- negotiation ---------------------------------------------------------------------------
def test_packed_rings_are_offered_only_with_packed_on(memory, plug_on, transport_kind):
    rig = plug_on(VirtioRng(memory), transport_kind)
    assert not rig.driver.features() & PACKED
    rig = plug_on(VirtioRng(memory, packed=True), transport_kind)
    assert rig.driver.features() & PACKED


def test_the_queues_follow_the_layout_the_driver_accepts(memory, plug_on, transport_kind):
    device = VirtioRng(memory, packed=True)
    rig = plug_on(device, transport_kind)
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
def test_blk_on_a_ring_that_is_no_power_of_two_over_many_laps(memory, plug_on, transport_kind, image):
    """A 100-slot ring, three-slot requests, twelve in flight per kick: 20 kicks go round
    the ring seven times, and every read brings back its own sectors."""
    rig = plug_on(VirtioBlock(memory, open_image(str(image), "raw"), packed=True), transport_kind)
    rig.start(1, size=100)
    disk = image.read_bytes()
    queue = rig.driver.queues[0]
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


def test_rng(memory, plug_on, transport_kind):
    rig = plug_on(VirtioRng(memory, packed=True), transport_kind)
    rig.start(1)
    first, second = rig.driver.alloc(32), rig.driver.alloc(32)
    head = rig.driver.submit(0, [Buffer(first, 32, True), Buffer(second, 32, True)])
    assert rig.driver.queues[0].take_used() == [(head, 64)]
    assert len(set(memory.read(first, 32) + memory.read(second, 32))) > 16
    head = rig.driver.submit(0, [Buffer(first, 8, True)], indirect=True)
    assert rig.driver.queues[0].take_used() == [(head, 8)]
    assert rig.take_interrupt() & spec.INT_USED_BUFFER


def test_console_output_and_input(memory, plug_on, transport_kind):
    backend = BufferBackend()
    device = VirtioConsole(memory, backend, packed=True)
    backend.start(device.receive)
    rig = plug_on(device, transport_kind)
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


# --- notifications ----------------------------------------------------------------------------------
def test_interrupts_follow_the_driver_event_suppression_area(memory, plug_on, transport_kind):
    rig = plug_on(VirtioRng(memory, packed=True), transport_kind)
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


def test_requests_added_during_a_drain_need_no_kick(memory, plug_on, image):
    device = VirtioBlock(memory, open_image(str(image), "raw"), packed=True)
    rig = plug_on(device, "mmio")
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
def test_hostile_ring_needs_reset_and_a_reset_recovers(memory, plug_on, transport_kind, case):
    rig = plug_on(VirtioRng(memory, packed=True), transport_kind)
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
def test_queue_size_zero_or_above_the_maximum_needs_reset(memory, plug_on, transport_kind, size, broken):
    device = VirtioRng(memory, packed=True)
    rig = plug_on(device, transport_kind)
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
def test_misplaced_areas_need_reset(memory, plug_on, transport_kind, addresses):
    device = VirtioRng(memory, packed=True)
    rig = plug_on(device, transport_kind)
    rig.driver.negotiate()
    rig.program_queue(0, 64, addresses)
    rig.driver_ok()
    assert rig.needs_reset() and not device.active
    assert rig.take_interrupt() & spec.INT_CONFIG_CHANGE


def test_the_same_areas_well_placed_work(memory, plug_on, transport_kind):
    device = VirtioRng(memory, packed=True)
    rig = plug_on(device, transport_kind)
    rig.driver.negotiate()
    rig.program_queue(0, 64, (0x10000, 0x11000, 0x11004))
    rig.driver_ok()
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

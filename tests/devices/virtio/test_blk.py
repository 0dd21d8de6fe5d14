"""virtio-blk request round trips through the mock driver against a raw image file."""

from __future__ import annotations

import os
import struct

import pytest

from pyhv.block.backend import open_image
from pyhv.devices.virtio import blk, spec
from pyhv.devices.virtio.blk import VirtioBlock
from pyhv.devices.virtio.mock_driver import Buffer

DISK_SIZE = 64 * 1024 + 100  # a partial last sector is not addressable


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(range(256)) * (DISK_SIZE // 256) + b"\xee" * (DISK_SIZE % 256))
    return path


def start(memory, plug, image, read_only=False, serial="pyhv-disk-0", drop=0):
    device = VirtioBlock(memory, open_image(str(image), "raw", read_only), serial=serial)
    driver, transport, irq = plug(device)
    driver.start(1, drop_features=drop)
    return driver, device


def request_buffers(driver, rtype, sector=0, out=b"", in_length=0, split_header=False):
    """The buffers of one request in guest memory: (buffers, data address or None, status address)."""
    header = driver.alloc(16)
    driver.memory.write(header, struct.pack("<IIQ", rtype, 0, sector))
    buffers = [Buffer(header, 8, False), Buffer(header + 8, 8, False)] if split_header else [Buffer(header, 16, False)]
    if out:
        gpa = driver.alloc(len(out))
        driver.memory.write(gpa, out)
        buffers.append(Buffer(gpa, len(out), False))
    data = driver.alloc(in_length) if in_length else None
    if in_length:
        buffers.append(Buffer(data, in_length, True))
    status = driver.alloc(1, fill=0xFF)
    buffers.append(Buffer(status, 1, True))
    return buffers, data, status


def request(driver, rtype, sector=0, out=b"", in_length=0, indirect=False, split_header=False):
    """Submit one request; (status, used length, bytes read back)."""
    buffers, data, status = request_buffers(driver, rtype, sector, out, in_length, split_header)
    head = driver.submit(0, buffers, indirect=indirect)
    used = driver.queues[0].take_used()
    assert [h for h, _ in used] == [head]
    read_back = driver.memory.read(data, in_length) if in_length else b""
    return driver.memory.read_u8(status), used[0][1], read_back


def test_config_space(memory, plug, image):
    driver, device = start(memory, plug, image)
    config = device.config_space()
    assert len(config) == 60
    assert struct.unpack_from("<Q", config, 0)[0] == DISK_SIZE // 512
    assert struct.unpack_from("<I", config, 12)[0] == blk.SEG_MAX
    assert struct.unpack_from("<I", config, 20)[0] == 512
    assert struct.unpack_from("<III", config, 36) == (blk.MAX_DISCARD_SECTORS, blk.MAX_DISCARD_SEGMENTS,
                                                      blk.DISCARD_ALIGNMENT_SECTORS)
    assert driver.transport.read(0x100, 8) == DISK_SIZE // 512  # through the MMIO window
    assert driver.transport.read(0x100 + 20, 4) == 512
    features = driver.features()
    for bit in (blk.F_SEG_MAX, blk.F_BLK_SIZE, blk.F_FLUSH, blk.F_DISCARD, blk.F_WRITE_ZEROES):
        assert features >> bit & 1
    assert not features >> blk.F_RO & 1


@pytest.mark.parametrize("indirect", [False, True])
@pytest.mark.parametrize("split_header", [False, True])
def test_read(memory, plug, image, indirect, split_header):
    driver, _device = start(memory, plug, image)
    status, used, data = request(driver, blk.T_IN, sector=3, in_length=1024, indirect=indirect,
                                 split_header=split_header)
    assert status == blk.S_OK
    assert used == 1025
    assert data == image.read_bytes()[3 * 512:5 * 512]


def test_write_then_read(memory, plug, image):
    driver, _device = start(memory, plug, image)
    payload = os.urandom(1536)
    status, used, _ = request(driver, blk.T_OUT, sector=10, out=payload)
    assert (status, used) == (blk.S_OK, 1)
    assert image.read_bytes()[10 * 512:13 * 512] == payload
    assert request(driver, blk.T_IN, sector=10, in_length=1536)[2] == payload
    assert request(driver, blk.T_FLUSH)[0] == blk.S_OK


def test_write_scattered_over_descriptors(memory, plug, image):
    driver, _device = start(memory, plug, image)
    header, first, second, status = driver.alloc(16), driver.alloc(512), driver.alloc(512), driver.alloc(1, 0xFF)
    memory.write(header, struct.pack("<IIQ", blk.T_OUT, 0, 1))
    memory.write(first, b"A" * 512)
    memory.write(second, b"B" * 512)
    driver.submit(0, [Buffer(header, 16, False), Buffer(first, 512, False), Buffer(second, 512, False),
                      Buffer(status, 1, True)])
    assert memory.read_u8(status) == blk.S_OK
    assert image.read_bytes()[512:1536] == b"A" * 512 + b"B" * 512


def test_get_id(memory, plug, image):
    driver, _device = start(memory, plug, image, serial="serial-123")
    status, used, data = request(driver, blk.T_GET_ID, in_length=20)
    assert status == blk.S_OK and used == 21
    assert data == b"serial-123".ljust(20, b"\0")


def test_discard_and_write_zeroes(memory, plug, image):
    driver, _device = start(memory, plug, image)
    segment = struct.pack("<QII", 8, 16, 0)
    assert request(driver, blk.T_DISCARD, out=segment)[0] == blk.S_OK
    assert image.read_bytes()[8 * 512:24 * 512] == bytes(16 * 512)
    zeroes = struct.pack("<QII", 40, 2, 1) + struct.pack("<QII", 60, 1, 0)
    assert request(driver, blk.T_WRITE_ZEROES, out=zeroes)[0] == blk.S_OK
    disk = image.read_bytes()
    assert disk[40 * 512:42 * 512] == bytes(1024) and disk[60 * 512:61 * 512] == bytes(512)
    assert disk[42 * 512:43 * 512] != bytes(512)  # neighbours untouched


def test_discard_with_unmap_flag_is_unsupported(memory, plug, image):
    driver, _device = start(memory, plug, image)
    assert request(driver, blk.T_DISCARD, out=struct.pack("<QII", 0, 1, 1))[0] == blk.S_UNSUPP


@pytest.mark.parametrize("segments", [b"", b"\0" * 15, struct.pack("<QII", 127, 2, 0)])
def test_bad_discard_segments_are_io_errors(memory, plug, image, segments):
    driver, _device = start(memory, plug, image)
    assert request(driver, blk.T_DISCARD, out=segments)[0] == blk.S_IOERR


@pytest.mark.parametrize("rtype,sector,length", [
    (blk.T_IN, DISK_SIZE // 512, 512),  # first sector past the end
    (blk.T_IN, DISK_SIZE // 512 - 1, 1024),  # straddles the end
    (blk.T_IN, 0, 100),  # not whole sectors
    (blk.T_IN, 1 << 62, 512),  # absurd sector
    (blk.T_IN, 1 << 63, 512),  # read signed by the device: negative, and refused as such
    (blk.T_IN, (1 << 64) - 1, 512),
])
def test_out_of_range_reads_are_io_errors(memory, plug, image, rtype, sector, length):
    driver, _device = start(memory, plug, image)
    status, used, _ = request(driver, rtype, sector=sector, in_length=length)
    assert status == blk.S_IOERR and used == 1


def test_unknown_request_type_is_unsupported(memory, plug, image):
    driver, _device = start(memory, plug, image)
    assert request(driver, 99)[0] == blk.S_UNSUPP


def test_read_only_refuses_writes(memory, plug, image):
    before = image.read_bytes()
    driver, _device = start(memory, plug, image, read_only=True)
    assert driver.features() >> blk.F_RO & 1
    assert not driver.features() >> blk.F_DISCARD & 1
    assert request(driver, blk.T_OUT, sector=0, out=b"x" * 512)[0] == blk.S_IOERR
    assert request(driver, blk.T_WRITE_ZEROES, out=struct.pack("<QII", 0, 1, 0))[0] == blk.S_IOERR
    assert request(driver, blk.T_IN, sector=0, in_length=512)[2] == before[:512]
    assert request(driver, blk.T_FLUSH)[0] == blk.S_OK
    assert image.read_bytes() == before


def test_request_without_status_byte_needs_reset(memory, plug, image):
    driver, _device = start(memory, plug, image)
    header = driver.alloc(16)
    driver.submit(0, [Buffer(header, 16, False)])
    assert driver.needs_reset()
    assert driver.interrupt_status() & spec.INT_CONFIG_CHANGE


def test_short_header_needs_reset(memory, plug, image):
    driver, _device = start(memory, plug, image)
    driver.submit(0, [Buffer(driver.alloc(8), 8, False), Buffer(driver.alloc(1), 1, True)])
    assert driver.needs_reset()


def test_several_requests_one_kick_one_interrupt(memory, plug, image):
    driver, _device = start(memory, plug, image)
    queue = driver.queues[0]
    statuses = []
    for sector in range(4):
        header, data, status = driver.alloc(16), driver.alloc(512), driver.alloc(1, 0xFF)
        memory.write(header, struct.pack("<IIQ", blk.T_IN, 0, sector))
        queue.publish(queue.add_chain([Buffer(header, 16, False), Buffer(data, 512, True),
                                       Buffer(status, 1, True)]))
        statuses.append(status)
    driver.kick(0)
    assert len(queue.take_used()) == 4
    assert all(memory.read_u8(s) == blk.S_OK for s in statuses)
    assert driver.ack_interrupts() == spec.INT_USED_BUFFER


def test_discard_ignore_leaves_discard_unoffered(memory, plug, image):
    before = image.read_bytes()
    device = VirtioBlock(memory, open_image(str(image), "raw", False), discard=False)
    driver, _transport, _irq = plug(device)
    driver.start(1)
    assert not driver.features() >> blk.F_DISCARD & 1
    assert driver.features() >> blk.F_WRITE_ZEROES & 1
    assert request(driver, blk.T_DISCARD, out=struct.pack("<QII", 0, 8, 0))[0] == blk.S_UNSUPP
    assert image.read_bytes() == before


def submit_all(driver, requests):
    """Make every (type, sector, out bytes, in length) available, then kick once; each one's
    (status, used length, bytes read), in order."""
    memory, queue = driver.memory, driver.queues[0]
    placed = []
    for rtype, sector, out, in_length in requests:
        buffers, data, status = request_buffers(driver, rtype, sector, out, in_length)
        placed.append((queue.add_chain(buffers), data, in_length, status))
    for head, *_ in placed:
        queue.publish(head)
    driver.kick(0)
    used = dict(queue.take_used())
    return [(memory.read_u8(status), used.get(head), memory.read(data, n) if n else b"")
            for head, data, n, status in placed]


def spy(device, method):
    """Record (offset, total bytes, views) of each call to the backend's ``method``."""
    calls = []
    original = getattr(device.backend, method)

    def recording(offset, buffers):
        calls.append((offset, sum(len(b) for b in buffers), len(buffers)))
        return original(offset, buffers)

    setattr(device.backend, method, recording)
    return calls


def test_adjacent_reads_go_to_the_backend_as_one_call(memory, plug, image):
    driver, device = start(memory, plug, image)
    calls = spy(device, "readv")
    lengths = [512, 1024, 512, 2048, 512, 512, 1024, 512]  # 8 in one kick: published by 4
    sectors = [sum(lengths[:k]) // 512 for k in range(len(lengths))]
    results = submit_all(driver, [(blk.T_IN, sector, b"", n) for sector, n in zip(sectors, lengths)])
    disk = image.read_bytes()
    for (status, used, data), sector, n in zip(results, sectors, lengths):
        assert (status, used, data) == (blk.S_OK, n + 1, disk[sector * 512:sector * 512 + n])
    assert calls == [(0, 4096, 4), (4096, 2560, 4)]  # a run never crosses a publication


def test_requests_that_do_not_continue_each_other_run_one_by_one(memory, plug, image):
    driver, device = start(memory, plug, image)
    reads, writes = spy(device, "readv"), spy(device, "writev")
    results = submit_all(driver, [(blk.T_IN, 0, b"", 512), (blk.T_IN, 2, b"", 512),  # a gap
                                  (blk.T_OUT, 3, b"w" * 512, 0), (blk.T_IN, 4, b"", 512)])  # a write between
    assert [status for status, _, _ in results] == [blk.S_OK] * 4
    assert reads == [(0, 512, 1), (1024, 512, 1), (2048, 512, 1)] and writes == [(1536, 512, 1)]


def test_adjacent_writes_go_to_the_backend_as_one_call(memory, plug, image):
    driver, device = start(memory, plug, image)
    calls = spy(device, "writev")
    results = submit_all(driver, [(blk.T_OUT, 1 + k, bytes([0x41 + k]) * 512, 0) for k in range(4)])
    assert [(status, used) for status, used, _ in results] == [(blk.S_OK, 1)] * 4
    assert calls == [(512, 1024, 2), (1536, 1024, 2)]
    assert image.read_bytes()[512:2560] == b"A" * 512 + b"B" * 512 + b"C" * 512 + b"D" * 512


def test_a_run_with_a_bad_request_reports_each_on_its_own(memory, plug, image):
    """The last sector, then a read from past the end that continues it: the first is read,
    the second fails alone."""
    last = DISK_SIZE // 512 - 1
    driver, device = start(memory, plug, image)
    calls = spy(device, "readv")
    results = submit_all(driver, [(blk.T_IN, last, b"", 512), (blk.T_IN, last + 1, b"", 512)] * 2)
    assert [status for status, _, _ in results[:2]] == [blk.S_OK, blk.S_IOERR]
    assert results[0][2] == image.read_bytes()[last * 512:(last + 1) * 512]
    assert all(size == 512 for _, size, _ in calls)  # never one call for both


def test_a_backend_failure_in_a_run_fails_only_its_request(memory, plug, image):
    driver, device = start(memory, plug, image)
    original = device.backend.readv

    def failing(offset, buffers):
        if offset <= 1024 < offset + sum(len(b) for b in buffers):
            raise OSError(5, "Input/output error")  # sector 2 is unreadable
        return original(offset, buffers)

    device.backend.readv = failing
    results = submit_all(driver, [(blk.T_IN, k, b"", 512) for k in range(4)])
    assert [status for status, _, _ in results] == [blk.S_OK, blk.S_OK, blk.S_IOERR, blk.S_OK]
    assert results[3][2] == image.read_bytes()[1536:2048]


def test_adjacent_writes_to_a_read_only_disk_all_fail(memory, plug, image):
    before = image.read_bytes()
    driver, _device = start(memory, plug, image, read_only=True)
    results = submit_all(driver, [(blk.T_OUT, k, b"x" * 512, 0) for k in range(4)])
    assert [status for status, _, _ in results] == [blk.S_IOERR] * 4
    assert image.read_bytes() == before


def test_merged_reads_and_writes_on_qcow2(memory, plug, tmp_path):
    """A qcow2 disk (64 KiB clusters): a merged run crosses a cluster boundary and unallocated
    clusters, and reads back what the merged writes put there."""
    from pyhv.block.ops import create_image

    path = tmp_path / "disk.qcow2"
    create_image(str(path), "qcow2", 1 << 20, {})
    device = VirtioBlock(memory, open_image(str(path), "qcow2"))
    driver, _transport, _irq = plug(device)
    driver.start(1)
    first = 127  # sectors 127-130 straddle the first cluster boundary (sector 128)
    payloads = [bytes([0x30 + k]) * 512 for k in range(4)]
    writes = submit_all(driver, [(blk.T_OUT, first + k, data, 0) for k, data in enumerate(payloads)])
    assert [status for status, _, _ in writes] == [blk.S_OK] * 4
    reads = submit_all(driver, [(blk.T_IN, first - 1 + k, b"", 512) for k in range(6)])
    assert [status for status, _, _ in reads] == [blk.S_OK] * 6
    assert [data for _, _, data in reads] == [bytes(512)] + payloads + [bytes(512)]
    device.close()


@pytest.mark.parametrize("indirect", [False, True])
def test_write_then_read_over_packed_rings(memory, plug_on, transport_kind, image, indirect):
    device = VirtioBlock(memory, open_image(str(image), "raw"), serial="packed-0", packed=True)
    rig = plug_on(device, transport_kind)
    assert rig.start(1) >> spec.F_RING_PACKED & 1
    driver = rig.driver
    payload = os.urandom(1536)
    assert request(driver, blk.T_OUT, sector=10, out=payload, indirect=indirect)[:2] == (blk.S_OK, 1)
    assert image.read_bytes()[10 * 512:13 * 512] == payload
    assert request(driver, blk.T_IN, sector=10, in_length=1536, indirect=indirect) == (blk.S_OK, 1537, payload)
    assert request(driver, blk.T_IN, sector=3, in_length=512, indirect=indirect)[2] == image.read_bytes()[1536:2048]
    assert request(driver, blk.T_FLUSH)[0] == blk.S_OK
    status, used, serial = request(driver, blk.T_GET_ID, in_length=20)
    assert (status, used, serial.rstrip(b"\0")) == (blk.S_OK, 21, b"packed-0")
    assert rig.take_interrupt() & spec.INT_USED_BUFFER

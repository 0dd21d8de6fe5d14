"""virtio-rng fills the driver's buffers with host randomness."""

from __future__ import annotations

from pyhv.devices.virtio import rng, spec
from pyhv.devices.virtio.mock_driver import Buffer
from pyhv.devices.virtio.rng import VirtioRng


def test_fills_buffers(memory, plug):
    driver, _transport, irq = plug(VirtioRng(memory))
    driver.start(1)
    first, second = driver.alloc(32), driver.alloc(32)
    head = driver.submit(0, [Buffer(first, 32, True), Buffer(second, 32, True)])
    assert driver.queues[0].take_used() == [(head, 64)]
    data = memory.read(first, 32) + memory.read(second, 32)
    assert data != bytes(64)
    assert len(set(data)) > 16  # 64 random bytes have many distinct values
    assert irq.level and driver.ack_interrupts() == spec.INT_USED_BUFFER


def test_two_requests_differ(memory, plug):
    driver, _transport, _irq = plug(VirtioRng(memory))
    driver.start(1)
    a, b = driver.alloc(16), driver.alloc(16)
    driver.submit(0, [Buffer(a, 16, True)])
    driver.submit(0, [Buffer(b, 16, True)], indirect=True)
    assert memory.read(a, 16) != memory.read(b, 16)


def test_request_is_capped(memory, plug):
    driver, _transport, _irq = plug(VirtioRng(memory))
    driver.start(1)
    size = rng.MAX_BYTES_PER_REQUEST + 4096
    head = driver.submit(0, [Buffer(driver.alloc(size), size, True)])
    assert driver.queues[0].take_used() == [(head, rng.MAX_BYTES_PER_REQUEST)]


def test_readable_only_chain_gets_nothing(memory, plug):
    driver, _transport, _irq = plug(VirtioRng(memory))
    driver.start(1)
    gpa = driver.alloc(16)
    head = driver.submit(0, [Buffer(gpa, 16, False)])
    assert driver.queues[0].take_used() == [(head, 0)]
    assert memory.read(gpa, 16) == bytes(16)

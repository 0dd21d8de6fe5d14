"""virtio-console: guest output reaches the back-end, host input reaches the guest."""

from __future__ import annotations

import threading

from pyhv.chardev import BufferBackend
from pyhv.devices.virtio import console, spec
from pyhv.devices.virtio.console import VirtioConsole
from pyhv.devices.virtio.mock_driver import Buffer


def start(memory, plug):
    backend = BufferBackend()
    device = VirtioConsole(memory, backend)
    backend.start(device.receive)
    driver, transport, irq = plug(device)
    accepted = driver.start(2)
    return driver, device, backend, accepted


def post_receive_buffer(driver, size):
    queue = driver.queues[console.RECEIVE_QUEUE]
    gpa = driver.alloc(size)
    head = queue.add_chain([Buffer(gpa, size, True)])
    queue.publish(head)
    return gpa, head


def test_guest_output_reaches_backend(memory, plug):
    driver, _device, backend, _ = start(memory, plug)
    first, second = driver.alloc(6), driver.alloc(7)
    memory.write(first, b"hello ")
    memory.write(second, b"world\r\n")
    head = driver.submit(console.TRANSMIT_QUEUE, [Buffer(first, 6, False), Buffer(second, 7, False)])
    assert backend.output == b"hello world\r\n"
    assert driver.queues[console.TRANSMIT_QUEUE].take_used() == [(head, 0)]
    assert driver.ack_interrupts() == spec.INT_USED_BUFFER


def test_host_input_reaches_guest(memory, plug):
    driver, _device, backend, _ = start(memory, plug)
    gpa, head = post_receive_buffer(driver, 64)
    driver.kick(console.RECEIVE_QUEUE)
    assert driver.queues[0].take_used() == []  # nothing typed yet
    backend.feed(b"ls -l\n")
    assert driver.queues[0].take_used() == [(head, 6)]
    assert memory.read(gpa, 6) == b"ls -l\n"
    assert driver.ack_interrupts() == spec.INT_USED_BUFFER


def test_input_waits_for_buffers_and_splits_over_them(memory, plug):
    driver, _device, backend, _ = start(memory, plug)
    backend.feed(b"abcdefghij")  # before the driver posted any buffer
    first, head1 = post_receive_buffer(driver, 4)
    second, head2 = post_receive_buffer(driver, 16)
    driver.kick(console.RECEIVE_QUEUE)
    assert driver.queues[0].take_used() == [(head1, 4), (head2, 6)]
    assert memory.read(first, 4) + memory.read(second, 6) == b"abcdefghij"


def test_input_from_another_thread(memory, plug):
    driver, _device, backend, _ = start(memory, plug)
    gpa, head = post_receive_buffer(driver, 64)
    driver.kick(console.RECEIVE_QUEUE)
    feeder = threading.Thread(target=backend.feed, args=(b"from a thread",))
    feeder.start()
    feeder.join()
    assert driver.queues[0].take_used() == [(head, 13)]
    assert memory.read(gpa, 13) == b"from a thread"


def test_pending_input_is_bounded(memory, plug):
    _driver, device, backend, _ = start(memory, plug)
    backend.feed(b"x" * (console.MAX_PENDING_INPUT + 10))
    assert len(device.pending_input) == console.MAX_PENDING_INPUT
    assert device.dropped_input == 10


def test_emergency_write(memory, plug):
    driver, _device, backend, accepted = start(memory, plug)
    assert accepted >> console.F_EMERG_WRITE & 1
    driver.transport.write(0x100 + console.EMERG_WR_OFFSET, 4, ord("!"))
    assert backend.output == b"!"


def test_config_space(memory, plug):
    driver, _device, _backend, _ = start(memory, plug)
    assert driver.transport.read(0x100 + 4, 4) == 1  # max_nr_ports
    assert not driver.features() >> console.F_MULTIPORT & 1
    assert driver.read32(0x008) == spec.ID_CONSOLE

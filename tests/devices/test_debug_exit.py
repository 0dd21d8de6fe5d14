"""isa-debug-exit: the exit status QEMU gives, for every access size."""

from __future__ import annotations

import pytest

from pyhv.bus import Bus
from pyhv.devices.debug_exit import DebugExit, exit_status
from pyhv.devices.port80 import Port80
from pyhv.lifecycle import Lifecycle, Shutdown


@pytest.mark.parametrize("size,value,status", [
    (1, 0x00, 1),
    (1, 0x10, 0x21),
    (1, 0x7F, 0xFF),
    (1, 0x80, 0x01),  # bit 7 is shifted out of the 8-bit status
    (1, 0x1FF, 0xFF),  # a byte write carries only a byte
    (2, 0x1234, 0x69),
    (4, 0x3, 7),
    (4, 0xFFFFFFFF, 0xFF),
    (4, 0x12345678, 0xF1),
])
def test_guest_write_ends_vm_with_qemu_status(size: int, value: int, status: int) -> None:
    lifecycle = Lifecycle()
    bus = Bus("pio")
    bus.attach(0xF4, 4, DebugExit(lifecycle))
    bus.write(0xF4, size, value)
    assert isinstance(lifecycle.pending, Shutdown)
    assert lifecycle.pending.status == status
    assert lifecycle.stopped.is_set()
    assert exit_status(value, size) == status


def test_status_is_always_odd() -> None:
    assert all(exit_status(v, 1) & 1 for v in range(256))


def test_first_request_wins() -> None:
    lifecycle = Lifecycle()
    device = DebugExit(lifecycle)
    device.write(0, 1, 1)
    device.write(0, 1, 2)
    assert lifecycle.pending.status == 3


def test_port80_keeps_the_last_post_code() -> None:
    bus = Bus("pio")
    post = Port80()
    bus.attach(0x80, 1, post)
    bus.write(0x80, 1, 0x1234)  # an outb carries one byte
    bus.write(0x80, 1, 0xAB)
    assert post.last_value == 0xAB and post.writes == 2
    assert bus.read(0x80, 1) == 0xAB

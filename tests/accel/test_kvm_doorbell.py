"""KvmAccelerator.doorbell: KVM_IOEVENTFD takes a matching guest MMIO write off the bus and
signals the eventfd instead; other values still exit; a duplicate binding is refused."""

from __future__ import annotations

import pytest

from pyhv.accel.base import Platform
from pyhv.bus import Bus
from pyhv.cpu_model import pyhv64
from pyhv.cpu_state import CpuBootState, Segment
from pyhv.devices.virtio.iothread import EventFd
from pyhv.kvm.system import kvm_available
from pyhv.lifecycle import Lifecycle, Shutdown
from pyhv.memory import GuestMemory

pytestmark = pytest.mark.skipif(kvm_available() is not None, reason=f"needs /dev/kvm: {kvm_available()}")

RAM = 0x20000
WINDOW = 0x30000  # above RAM: writes here are MMIO
NOTIFY = WINDOW + 0x50

# Real mode: ds = 0x3000, then QueueNotify-like writes of 0 and 1 to [0x50], then stop.
CODE = bytes.fromhex(
    "b80030"              # mov ax, 0x3000
    "8ed8"                # mov ds, ax
    "66c706500000000000"  # mov dword [0x50], 0   (matches the doorbell)
    "66c706500001000000"  # mov dword [0x50], 1   (does not)
    "66c706500000000000"  # mov dword [0x50], 0   (matches again)
    "b0ffe6f4"            # mov al, 0xff ; out 0xf4, al
    "f4"                  # hlt
)


class Recorder:
    def __init__(self, lifecycle=None):
        self.lifecycle = lifecycle
        self.writes = []

    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))
        if self.lifecycle is not None and value == 0xFF:
            self.lifecycle.shutdown(3, "test done")


@pytest.fixture
def vm():
    from pyhv.accel.kvm import KvmAccelerator

    memory = GuestMemory(RAM)
    pio, mmio, lifecycle = Bus("pio"), Bus("mmio"), Lifecycle()
    window, port = Recorder(), Recorder(lifecycle)
    mmio.attach(WINDOW, 0x100, window)
    pio.attach(0xF4, 1, port)
    memory.write(0x1000, CODE)
    accel = KvmAccelerator(Platform(memory, pio, mmio, lifecycle, pyhv64()))
    accel.load_boot_state(CpuBootState(rip=0x1000, cs=Segment.real_mode(0, code=True)))
    yield accel, window
    accel.close()
    memory.close()


def test_matching_writes_signal_the_eventfd_without_an_exit(vm):
    accel, window = vm
    event = EventFd()
    try:
        undo = accel.doorbell(NOTIFY, 4, 0, event.fd)
        assert undo is not None and accel.doorbells == 1
        assert accel.run() == Shutdown(3, "test done")
        assert window.writes == [(0x50, 4, 1)]  # only the value the doorbell does not match
        assert event.drain() == 2
        undo()
        assert accel.doorbells == 0
    finally:
        event.close()


def test_without_a_doorbell_every_write_exits(vm):
    accel, window = vm
    assert accel.run() == Shutdown(3, "test done")
    assert window.writes == [(0x50, 4, 0), (0x50, 4, 1), (0x50, 4, 0)]


def test_a_second_identical_binding_is_refused_not_raised(vm, caplog):
    accel, _window = vm
    first, second = EventFd(), EventFd()
    try:
        assert accel.doorbell(NOTIFY, 4, 0, first.fd) is not None
        assert accel.doorbell(NOTIFY, 4, 0, second.fd) is None
        assert f"KVM_IOEVENTFD at {NOTIFY:#x}+4 refused" in caplog.text
        assert accel.doorbells == 1
    finally:
        first.close()
        second.close()

"""The KVM exit handler is pure: fake exits in, bus traffic and stop requests out, no /dev/kvm."""

import pytest

from pyhv.accel.kvm import ExitHandler
from pyhv.bus import Bus
from pyhv.errors import VmFatalError
from pyhv.kvm import exits as ex
from pyhv.kvm import structs as s
from pyhv.lifecycle import Reset, Shutdown


class Register:
    def __init__(self, value=0):
        self.value = value
        self.writes = []

    def read(self, offset, size):
        return (self.value + offset) & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


@pytest.fixture
def rig():
    pio, mmio = Bus("pio"), Bus("mmio")
    dev = Register(0x11223344)
    pio.attach(0x3F8, 8, dev)
    mmio.attach(0xFEE0_0000, 0x1000, dev)
    answers = []
    handler = ExitHandler(pio, mmio, answers.append, answers.append)
    return handler, dev, answers, pio, mmio


def test_io_out_reaches_device_at_offset(rig):
    handler, dev, _, _, _ = rig
    assert handler.handle(ex.IoOut(0x3F9, 1, 1, b"\x41")) is None
    assert dev.writes == [(1, 1, 0x41)]


def test_rep_outs_writes_each_element(rig):
    handler, dev, _, _, _ = rig
    handler.handle(ex.IoOut(0x3F8, 2, 3, b"\x01\x00\x02\x00\x03\x00"))
    assert dev.writes == [(0, 2, 1), (0, 2, 2), (0, 2, 3)]


def test_io_in_answers_little_endian(rig):
    handler, _, answers, _, _ = rig
    handler.handle(ex.IoIn(0x3F8, 4, 1))
    assert answers == [bytes.fromhex("44332211")]


def test_unclaimed_port_reads_all_ones_and_counts(rig):
    handler, _, answers, pio, _ = rig
    handler.handle(ex.IoIn(0x1234, 2, 2))
    assert answers == [b"\xff\xff\xff\xff"]
    handler.handle(ex.IoOut(0x1234, 1, 1, b"\x00"))
    assert pio.unclaimed_reads == 2 and pio.unclaimed_writes == 1


def test_mmio_read_and_write(rig):
    handler, dev, answers, _, mmio = rig
    handler.handle(ex.MmioWrite(0xFEE0_00B0, 4, b"\x00\x00\x00\x00"))
    handler.handle(ex.MmioRead(0xFEE0_0020, 4))
    assert dev.writes == [(0xB0, 4, 0)]
    assert answers == [(0x11223344 + 0x20).to_bytes(4, "little")]
    handler.handle(ex.MmioRead(0xD000_0000, 8))
    assert answers[-1] == b"\xff" * 8 and mmio.unclaimed_reads == 1


def test_triple_fault_is_a_reset(rig):
    handler = rig[0]
    assert handler.handle(ex.Shutdown()) == Reset("triple fault")


def test_system_events(rig):
    handler = rig[0]
    assert isinstance(handler.handle(ex.SystemEvent(s.KVM_SYSTEM_EVENT_SHUTDOWN, ())), Shutdown)
    assert isinstance(handler.handle(ex.SystemEvent(s.KVM_SYSTEM_EVENT_RESET, ())), Reset)
    with pytest.raises(VmFatalError, match="crashed"):
        handler.handle(ex.SystemEvent(s.KVM_SYSTEM_EVENT_CRASH, ()))


@pytest.mark.parametrize("exit_,text", [
    (ex.InternalError(1, (0x10, 0x20)), "emulation failure.*0x10 0x20"),
    (ex.FailEntry(0x80000021, 0), "could not enter the guest: hardware reason 0x80000021"),
    (ex.UnknownExit(99), "unhandled KVM exit reason 99"),
])
def test_fatal_exits_name_the_problem(rig, exit_, text):
    with pytest.raises(VmFatalError, match=text):
        rig[0].handle(exit_)


def test_every_exit_type_has_a_handler(rig):
    assert set(rig[0].table) == set(ex.VcpuExit)

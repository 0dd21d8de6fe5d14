"""Real /dev/kvm: a hand-assembled real-mode guest drives PIO and MMIO through the vCPU loop."""

import pytest

from pyhv.accel.base import Platform
from pyhv.bus import Bus
from pyhv.cpu_model import pyhv64
from pyhv.cpu_state import CpuBootState, Segment
from pyhv.errors import AccelError, VmFatalError
from pyhv.kvm.system import kvm_available
from pyhv.lifecycle import Lifecycle, Reset, Shutdown
from pyhv.memory import GuestMemory

pytestmark = pytest.mark.skipif(kvm_available() is not None, reason=f"needs /dev/kvm: {kvm_available()}")


class Port:
    def __init__(self, lifecycle, value):
        self.lifecycle = lifecycle
        self.value = value
        self.writes = []

    def read(self, offset, size):
        return self.value

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))
        if value == 0xFF:
            self.lifecycle.shutdown(3, "test done")


def run_real_mode(code: bytes, value=0xBEEF):
    from pyhv.accel.kvm import KvmAccelerator

    memory = GuestMemory(2 << 20)
    pio, mmio, lifecycle = Bus("pio"), Bus("mmio"), Lifecycle()
    port = Port(lifecycle, value)
    pio.attach(0xF4, 4, port)
    memory.write(0x1000, code)
    accel = KvmAccelerator(Platform(memory, pio, mmio, lifecycle, pyhv64()))
    try:
        accel.load_boot_state(CpuBootState(rip=0x1000, cs=Segment.real_mode(0, code=True)))
        return accel.run(), port, memory, pio
    finally:
        accel.close()


def test_out_loop_in_and_stop():
    code = bytes.fromhex(
        "b90300"      # mov cx, 3
        "89c8"        # mov ax, cx
        "e6f4"        # out 0xf4, al
        "49"          # dec cx
        "75f9"        # jnz back to mov ax,cx
        "e5f4"        # in ax, 0xf4
        "a30020"      # mov [0x2000], ax
        "e460"        # in al, 0x60 (nobody there)
        "a20220"      # mov [0x2002], al
        "b0ffe6f4"    # mov al, 0xff ; out 0xf4, al
        "f4"          # hlt (never reached)
    )
    stop, port, memory, pio = run_real_mode(code)
    assert stop == Shutdown(3, "test done")
    assert port.writes == [(0, 1, 3), (0, 1, 2), (0, 1, 1), (0, 1, 0xFF)]
    assert memory.read_u16(0x2000) == 0xBEEF
    assert memory.read_u8(0x2002) == 0xFF and pio.unclaimed_reads == 1


def test_missing_kvm_device_is_a_clear_error(tmp_path):
    from pyhv.accel.kvm import KvmAccelerator

    platform = Platform(GuestMemory(1 << 20), Bus("pio"), Bus("mmio"), Lifecycle(), pyhv64())
    with pytest.raises(AccelError, match="does not exist"):
        KvmAccelerator(platform, kvm_path=str(tmp_path / "kvm"))

"""A vCPU blocked in KVM_RUN must not hold the GIL, and a stop request from another thread
must get it out of the guest (Ctrl-A x, QMP quit and SIGTERM all take this path)."""

import fcntl
import threading
import time

import pytest

from pyhv.accel.base import Platform
from pyhv.bus import Bus
from pyhv.cpu_model import pyhv64
from pyhv.cpu_state import CpuBootState, Segment
from pyhv.kvm import ioctls as ic
from pyhv.kvm.syscall import raw_ioctl
from pyhv.kvm.system import kvm_available
from pyhv.lifecycle import Lifecycle, Shutdown
from pyhv.memory import GuestMemory

pytestmark = pytest.mark.skipif(kvm_available() is not None, reason=f"needs /dev/kvm: {kvm_available()}")

HALT_FOREVER = b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to hlt: never exits to user space


def halted_vm():
    from pyhv.accel.kvm import KvmAccelerator

    memory = GuestMemory(2 << 20)
    memory.write(0x1000, HALT_FOREVER)
    lifecycle = Lifecycle()
    accel = KvmAccelerator(Platform(memory, Bus("pio"), Bus("mmio"), lifecycle, pyhv64()))
    accel.load_boot_state(CpuBootState(rip=0x1000, cs=Segment.real_mode(0, code=True)))
    return accel, lifecycle


def test_stop_request_from_another_thread_leaves_kvm_run():
    accel, lifecycle = halted_vm()
    progress = []

    def other_thread():
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            progress.append(1)  # only possible while the vCPU thread has dropped the GIL
        lifecycle.shutdown(5, "stop from another thread")

    worker = threading.Thread(target=other_thread)
    try:
        worker.start()
        stop = accel.run()
    finally:
        worker.join()
        accel.close()
    assert stop == Shutdown(5, "stop from another thread")
    assert len(progress) > 1000


@pytest.mark.parametrize("call", ["fcntl", "ctypes"])
def test_both_ioctl_paths_drop_the_gil(call):
    accel, lifecycle = halted_vm()
    progress = []

    def other_thread():
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            progress.append(1)
        accel.kick()

    worker = threading.Thread(target=other_thread)
    try:
        worker.start()
        accel._vcpu_thread = threading.get_ident()  # what run() records, so kick() signals us
        from pyhv.accel.kvm import _install_kick_handler

        _install_kick_handler()
        try:
            if call == "fcntl":
                fcntl.ioctl(accel.vcpu.fd, ic.KVM_RUN, 0)
            else:
                raw_ioctl(accel.vcpu.fd, ic.KVM_RUN, None)
        except InterruptedError:
            pass
    finally:
        worker.join()
        accel.close()
    assert len(progress) > 1000

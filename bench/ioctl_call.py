#!/usr/bin/env python3
"""KVM_RUN through ctypes' libc ioctl vs fcntl.ioctl, and the cost pyhv's exit loop adds.

A real-mode guest executes `out` in a loop; each variant runs N exits. Both ioctl paths drop
the GIL (checked in tests/accel/test_kvm_gil.py). Run it with each interpreter:
    .venv/bin/python bench/ioctl_call.py; .venv-pypy/bin/python bench/ioctl_call.py
"""

from __future__ import annotations

import argparse
import fcntl
import platform
import time

from pyhv.accel.base import Platform
from pyhv.accel.kvm import KvmAccelerator
from pyhv.bus import Bus
from pyhv.cpu_model import pyhv64
from pyhv.cpu_state import CpuBootState, Segment
from pyhv.kvm import ioctls as ic
from pyhv.kvm.syscall import raw_ioctl
from pyhv.lifecycle import Lifecycle
from pyhv.memory import GuestMemory


class Sink:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if value == 0xFF:
            self.lifecycle.shutdown(0, "done")


def loop_guest(count: int) -> bytes:
    # mov cx, count; 1: out 0xf4, al (al=0); dec cx; jnz 1b; mov al, 0xff; out 0xf4, al; hlt
    return (b"\x31\xc0" + b"\xb9" + count.to_bytes(2, "little") + b"\xe6\xf4\x49\x75\xfb"
            + b"\xb0\xff\xe6\xf4\xf4")


def measure(variant: str, exits: int) -> float:
    memory = GuestMemory(2 << 20)
    pio, lifecycle = Bus("pio"), Lifecycle()
    pio.attach(0xF4, 1, Sink(lifecycle))
    memory.write(0x1000, loop_guest(exits))
    accel = KvmAccelerator(Platform(memory, pio, Bus("mmio"), lifecycle, pyhv64()))
    try:
        accel.load_boot_state(CpuBootState(rip=0x1000, cs=Segment.real_mode(0, code=True)))
        fd = accel.vcpu.fd
        start = time.perf_counter()
        if variant == "ctypes ioctl":
            for _ in range(exits):
                raw_ioctl(fd, ic.KVM_RUN, None)
        elif variant == "fcntl.ioctl":
            for _ in range(exits):
                fcntl.ioctl(fd, ic.KVM_RUN, 0)
        else:  # the whole pyhv loop: typed exits, dispatch, bus, device
            accel.run()
        return (time.perf_counter() - start) / exits * 1e6
    finally:
        accel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()}, {args.exits} exits, best of {args.rounds}")
    for variant in ("ctypes ioctl", "fcntl.ioctl", "pyhv exit loop"):
        best = min(measure(variant, args.exits) for _ in range(args.rounds))
        print(f"  {variant:16s} {best:6.2f} us/exit")


if __name__ == "__main__":
    main()

"""virtio-blk throughput and IOPS through pyhv's device, against the host on the same file.

For each image format (raw, qcow2) and each workload (1 MiB sequential, 4 KiB random; reads
and writes) one run measures:

  host    os.preadv/os.pwritev on the image file, one request at a time, at the same offsets
          (for qcow2, reads on the qcow2 file itself and writes on a copy of it, so the host's
          writes do not overwrite the image's metadata);
  host xN the same, the requests dealt out to N threads (N: the device's worker count, at
          least 2), for the reader to see what the host itself gains from parallelism;
          "ratio" is against the one-thread host, "vs xN" this one;
  device  the same requests through pyhv's virtio-blk device, driven host-side like a guest
          driver (mock rings in a GuestMemory, ``depth`` requests in flight, kick, wait for
          the used-buffer interrupt, refill), the queue served by the I/O thread as under
          KVM. The driver runs in a forked process (``--driver process``, the default), as
          a guest's driver runs on a vCPU outside the VMM's interpreter: guest RAM is
          shared, a kick is a write to the queue's eventfd (KVM's ioeventfd), the interrupt
          wakes the driver through an eventfd (KVM's irqfd), and virtio-mmio's INTx
          acknowledgement is a round trip to a thread of the VMM, as an MMIO exit is.
          ``--driver thread`` keeps the driver in a thread beside the device, sharing its
          GIL, and kicking through QueueNotify. Like Linux, the driver skips the kick while
          the device says (avail_event) it is still draining the ring.

Before the timed runs, every runner (host and device alike) runs untimed until it has done
``--warmup-requests`` requests: PyPy's JIT compiles each thread's loops only after thousands
of iterations (measured: the device's 1 MiB reads ran at 5.7, 6.0, 7.2, 9.2, 11.7, 11.6,
15.3, 16.7 GB/s over its first eight runs of 1024 requests), and a VMM runs warm.

Both sides read and write the host page cache: the image is written first and stays cached
(no O_DIRECT, no cache dropping; the block backends use neither). Guest buffers and the
host buffers start on page boundaries, as a guest's block layer hands out pages, and are
touched before timing. Every figure is the best of ``--repeat`` runs (the
machine is shared). ``--inline`` adds the synchronous path (queue processed inside the
kick, no I/O thread); ``--irq`` measures the interrupt paths under KVM (KVM_IRQ_LINE and
KVM_SIGNAL_MSI ioctls against an irqfd eventfd write).

``--workers N`` sets the device's worker threads for long requests (0: all in line on the
queue's thread); the device's default is what pyhv runs with.

Usage: python bench/blk.py [--size-mib 256] [--dir /tmp] [--repeat 3] [--formats raw,qcow2]
                           [--inline] [--irq] [--workers N] [--transport mmio|pci]
                           [--rings split|packed] [--driver process|thread]
                           [--warmup-requests 10000]
"""

from __future__ import annotations

import argparse
import functools
import mmap
import os
import platform
import random
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from typing import Callable, List, NamedTuple, Optional, Tuple

from _vmtiming import host_summary
from pyhv.block import fileio, open_image
from pyhv.block.cli import main as img_main
from pyhv.bus import Bus
from pyhv.devices.pci.builder import PciBuilder
from pyhv.devices.pci.mock_driver import MockVirtioPciDriver
from pyhv.devices.virtio import blk, mmio, spec
from pyhv.devices.virtio import pci as vpci
from pyhv.devices.virtio.blk import VirtioBlock
from pyhv.devices.virtio.iothread import EventFd, IoThread
from pyhv.devices.virtio.mock_driver import Buffer, MockMmioDriver, MockPackedQueue, align_up
from pyhv.devices.virtio.packed import DESC_F_AVAIL, DESC_F_USED, EVENT_FLAG_DESC, used_flags
from pyhv.devices.virtio.queue import memory_fence
from pyhv.irq import CallbackIrqLine
from pyhv.memory import GuestMemory, MiB

KiB = 1 << 10
PAGE = 4 * KiB
SECTOR = 512
GUEST_RAM = 128 * MiB
QUEUE_SIZE = 256
_HEADER = struct.Struct("<IIQ")
_PACKED_WRAP_BITS = DESC_F_AVAIL | DESC_F_USED


class Workload(NamedTuple):
    name: str
    size: int  # bytes per request
    random: bool
    write: bool
    depth: int  # requests in flight on the device side
    count: int  # requests per run

    def offsets(self, disk_size: int) -> List[int]:
        slots = disk_size // self.size
        if self.random:
            rng = random.Random(42)
            return [rng.randrange(slots) * self.size for _ in range(self.count)]
        return [(i % slots) * self.size for i in range(self.count)]


def workloads(disk_size: int, small_count: int) -> List[Workload]:
    big_count = 4 * disk_size // MiB  # four passes over the disk: enough time to measure
    return [
        Workload("1 MiB seq read", MiB, False, False, 8, big_count),
        Workload("1 MiB seq write", MiB, False, True, 8, big_count),
        Workload("4 KiB rand read", 4 * KiB, True, False, 64, small_count),
        Workload("4 KiB rand write", 4 * KiB, True, True, 64, small_count),
    ]


# --- the host's own I/O -------------------------------------------------------------------------

def _host_requests(fd: int, path: str, work: Workload, offsets: List[int], buffers: List[memoryview]) -> None:
    depth = len(buffers)
    if work.write:
        for i, offset in enumerate(offsets):
            fileio.pwrite_all(fd, buffers[i % depth], offset)
    else:
        for i, offset in enumerate(offsets):
            if fileio.pread_into(fd, buffers[i % depth], offset) != work.size:
                raise RuntimeError(f"{path}: short read at {offset:#x}")


def host_run(path: str, work: Workload, offsets: List[int], threads: int = 1) -> float:
    """The file I/O primitives the backends use (os.preadv/pwritev, or libc through ctypes
    on PyPy), cycling through ``depth`` buffers as the device's requests do: one buffer
    reused would stay in the CPU cache and flatter the host.

    ``threads`` > 1 deals the requests out round-robin to that many threads, each one
    request at a time with its share of the buffers: what the host gets from the
    parallelism the device's worker pool uses."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    buffers = _page_buffers(work.depth, work.size)
    try:
        if threads == 1:
            start = time.perf_counter()
            _host_requests(fd, path, work, offsets, buffers)
            return time.perf_counter() - start
        workers = [threading.Thread(target=_host_requests,
                                    args=(fd, path, work, offsets[i::threads], buffers[i::threads]))
                   for i in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - start
    finally:
        os.close(fd)


def _page_buffers(count: int, size: int) -> List[memoryview]:
    """``count`` buffers of ``size`` bytes, each from a page boundary, filled (in an anonymous
    mapping, unmapped once they are all gone). The device's requests land in whole guest
    pages, as Linux's block layer gives them, and the host gets the same: where a copy starts
    inside a cache line changes its cost (1 MiB writes from 16 bytes into a line ran at
    9.4 GB/s, from a page at 13.7 GB/s, on a 2-core AMD EPYC), and a bytearray starts
    wherever malloc puts it."""
    stride = align_up(size, PAGE)
    area = mmap.mmap(-1, count * stride)
    area.write(b"\x5a" * (count * stride))
    view = memoryview(area)
    return [view[k * stride:k * stride + size] for k in range(count)]


# --- pyhv's device, driven like a guest ------------------------------------------------------------

class _InterruptLine:
    """The device's INTx line: wakes the driver loop on every rising level through an eventfd,
    as KVM's irqfd does. (A ``threading.Event`` here would charge the device a wake-up that no
    guest pays: 11 µs on CPython and 160 µs on PyPy 3.9, against 2.5-4 µs for an eventfd.)"""

    def __init__(self) -> None:
        self.event = EventFd()
        self._poller = select.poll()
        self._poller.register(self.event.fd, select.POLLIN)

    def set_level(self, level: bool) -> None:
        if level:
            self.event.signal()

    def wait(self) -> None:
        """Return once the line has risen since the last :meth:`clear`."""
        self._poller.poll()

    def clear(self) -> None:
        self.event.drain()

    def close(self) -> None:
        self.event.close()


class _MsiSink(_InterruptLine):
    """MSI-X messages from the virtio-pci function: each wakes the driver (irqfd-like)."""

    def send_msi(self, address: int, data: int) -> None:
        self.event.signal()


class DeviceRig:
    """One virtio-blk device behind ``transport`` (virtio-mmio with its INTx line, or
    virtio-pci with MSI-X), with ``depth`` prebuilt request chains."""

    def __init__(self, path: str, fmt: str, work: Workload, use_iothread: bool,
                 workers: int = blk.DEFAULT_WORKERS, transport: str = "mmio", packed: bool = False,
                 own_process: bool = False) -> None:
        # own_process: guest RAM shared with a driver forked later (see DriverProcess), and
        # kicks written to the queue's eventfd, handed out where KVM takes an ioeventfd.
        self.memory = GuestMemory(GUEST_RAM, shared=own_process)
        self.device = VirtioBlock(self.memory, open_image(path, fmt), workers=workers, packed=packed)
        self.iothread: Optional[IoThread] = IoThread("bench-iothread") if use_iothread else None
        if own_process and self.iothread is None:
            raise ValueError("a driver in its own process kicks the I/O thread's eventfd: use_iothread")
        self._doorbell_fds: List[int] = []
        self._doorbell = self._take_doorbell if own_process else None
        if transport == "pci":
            self._attach_pci()
        else:
            self._attach_mmio()
        if own_process:
            self.kick = functools.partial(os.write, self._doorbell_fds[0], _EVENTFD_ONE)
        if self.iothread is not None:
            self.iothread.start()
        self.queue = self.driver.queues[0]
        self.packed = isinstance(self.queue, MockPackedQueue)
        request_type = blk.T_OUT if work.write else blk.T_IN
        self.headers = {}  # head -> header gpa
        self.statuses = {}  # head -> status gpa
        self.chains = {}  # head -> the request's buffers (a packed ring writes them again each time)
        for _ in range(work.depth):
            header = self.driver.alloc(16)
            # Whole pages, as a guest's block layer hands them out (see _page_buffers); touched:
            # faulted in, like a guest's.
            data = self.driver.alloc(work.size, fill=0x5A, align=PAGE)
            status = self.driver.alloc(1, fill=0xFF)
            buffers = [Buffer(header, 16, False), Buffer(data, work.size, not work.write), Buffer(status, 1, True)]
            head = self.queue.add_chain(buffers) if not self.packed else len(self.chains)
            self.memory.write(header, _HEADER.pack(request_type, 0, 0))
            self.headers[head] = header
            self.statuses[head] = status
            self.chains[head] = buffers
        self.in_ring = {}  # packed: buffer id -> request (the driver hands out ids as they free up)
        self.request_type = request_type
        self.kicks = 0
        self.expected_used = 1 if work.write else work.size + 1

    def _take_doorbell(self, address: int, size: int, datamatch: Optional[int], fd: int) -> Callable[[], None]:
        """Where KVM would register an ioeventfd: keep the queue's eventfd for the driver."""
        self._doorbell_fds.append(fd)
        return lambda: None

    def _attach_mmio(self) -> None:
        self.irq = _InterruptLine()
        transport = mmio.VirtioMmioTransport(self.device, self.irq)
        if self.iothread is not None:
            transport.use_iothread(self.iothread, self._doorbell, 0)
        self.driver = MockMmioDriver(transport, self.memory)
        # EVENT_IDX, as Linux drives it: used_event is kept at the last entry the driver has
        # seen, so the first completion after it interrupts and the driver refills early.
        self.event_idx = bool(self.driver.start(1, queue_size=QUEUE_SIZE) >> spec.F_EVENT_IDX & 1)
        self.kick = functools.partial(transport.write, mmio.QUEUE_NOTIFY, 4, 0)
        # Linux's vm_interrupt acknowledges every INTx interrupt: an MMIO exit to the VMM.
        self.ack = functools.partial(transport.write, mmio.INTERRUPT_ACK, 4, spec.INT_USED_BUFFER)
        self.ack_exits = True
        self._detach = transport.leave_iothread

    def _attach_pci(self) -> None:
        self.irq = _MsiSink()
        pio, mmio_bus = Bus("pio"), Bus("mmio")
        builder = PciBuilder(pio, mmio_bus, self.memory, lambda gsi: CallbackIrqLine(gsi, lambda *_: None),
                             self.irq)
        function = builder.add_virtio(self.device, "virtio-blk-pci").function
        if self.iothread is not None:
            function.use_iothread(self.iothread, self._doorbell)
        self.driver = MockVirtioPciDriver(pio, mmio_bus, self.memory, builder.slots[0].slot)
        self.driver.program_vector(0, 0xFEE0_0000, 0x30)  # configuration changes
        self.driver.program_vector(1, 0xFEE0_0000, 0x31)  # the request queue
        self.driver.set_msix(True)
        self.event_idx = bool(self.driver.start(1, vectors=[1]) >> spec.F_EVENT_IDX & 1)
        # Linux computes the queue's notify address once, then each kick is one write.
        self.driver.common_write(vpci.QUEUE_SELECT, 2, 0)
        notify = (self.driver.regions[vpci.CAP_NOTIFY_CFG]
                  + self.driver.common_read(vpci.QUEUE_NOTIFY_OFF, 2) * self.driver.notify_multiplier)
        self.kick = functools.partial(mmio_bus.write, notify, 2, 0)
        self.ack = lambda: None  # MSI-X is an edge: nothing to acknowledge
        self.ack_exits = False
        self._detach = function.leave_iothread

    def _queue_request(self, head: int, offset: int) -> None:
        memory, queue = self.memory, self.queue
        memory.write_u64(self.headers[head] + 8, offset // SECTOR)
        if self.packed:
            # Linux writes a packed chain's descriptors each time, the head's flags last.
            buffer_id = queue.add_chain(self.chains[head])
            self.in_ring[buffer_id] = head
            queue.publish(buffer_id)
            return
        memory.write_u16(queue.avail_ring + 4 + 2 * (queue.avail_idx % queue.size), head)
        queue.avail_idx = (queue.avail_idx + 1) & 0xFFFF

    def _used_waiting(self) -> bool:
        queue = self.queue
        if self.packed:
            flags = self.memory.read_u16(queue.desc_ring + 16 * queue.last_used + 14)
            return flags & _PACKED_WRAP_BITS == used_flags(queue.used_wrap)
        return queue.used_idx() != queue.last_used

    def _take_used(self) -> List[Tuple[int, int]]:
        queue = self.queue
        used = queue.take_used()
        if self.packed:
            # used_event as Linux keeps it with EVENT_IDX: the position it will look at next.
            queue.set_driver_event(EVENT_FLAG_DESC, queue.last_used, queue.used_wrap)
            return [(self.in_ring.pop(buffer_id), length) for buffer_id, length in used]
        queue.set_used_event(queue.last_used)
        return used

    def _publish_and_kick(self) -> None:
        if not self.packed:
            self.memory.write_u16(self.queue.avail_ring + 2, self.queue.avail_idx)
        # As Linux does: no kick while the device says it is still draining the ring.
        if self.queue.kick_needed(self.event_idx):
            self.kick()
            self.kicks += 1

    def run(self, offsets: List[int]) -> float:
        pending = iter(offsets)
        total = len(offsets)
        done = 0
        irq = self.irq
        read_u8 = self.memory.read_u8
        start = time.perf_counter()
        for head in self.headers:
            offset = next(pending, None)
            if offset is None:
                break
            self._queue_request(head, offset)
        self._publish_and_kick()
        while done < total:
            memory_fence()  # used_event is stored before the used index is loaded (virtio_mb)
            if not self._used_waiting():  # (re)checked after moving used_event
                irq.wait()
            irq.clear()
            self.ack()
            refilled = False
            for head, length in self._take_used():
                if length != self.expected_used or read_u8(self.statuses[head]) != blk.S_OK:
                    raise RuntimeError(f"request {head} failed: used {length}, status {read_u8(self.statuses[head])}")
                done += 1
                offset = next(pending, None)
                if offset is not None:
                    self._queue_request(head, offset)
                    refilled = True
            if refilled:
                self._publish_and_kick()
        return time.perf_counter() - start

    def close(self) -> None:
        if self.iothread is not None:
            self.iothread.stop()
            self._detach()
            self.iothread.close()
        self.device.close()
        self.irq.close()
        self.memory.close()


class DriverProcess:
    """The rig's driver loop in a forked process, as a guest's driver runs on a vCPU outside
    the VMM's interpreter (under KVM the vCPU thread leaves the GIL in KVM_RUN). Only what
    KVM itself would carry crosses over: a kick is a write to the queue's eventfd (an
    ioeventfd), an interrupt the eventfd the driver polls (an irqfd), and the RAM is shared.
    virtio-mmio's INTx acknowledgement is an MMIO write that KVM hands to the VMM: here a
    round trip to a thread of this process, which stands for the vCPU thread, runs it.

    The process stays for all runs of one workload, so its JIT warms up as the device's."""

    def __init__(self, rig: DeviceRig, offsets: List[int]) -> None:
        """``rig`` built with ``own_process``; ``offsets`` are the requests of every run."""
        exits, self._exits = socket.socketpair()
        self._exit_thread: Optional[threading.Thread] = None
        if rig.ack_exits:
            self._exit_thread = threading.Thread(target=_serve_exits, args=(self._exits, rig.ack),
                                                 name="bench-vcpu", daemon=True)
            self._exit_thread.start()
            rig.ack = functools.partial(_exit_to_vmm, exits)  # what the forked driver calls
        self._commands, child_commands = socket.socketpair()
        self.rig = rig
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                self._commands.close()
                while child_commands.recv(1) == b"r":
                    child_commands.sendall(struct.pack("d", rig.run(offsets)))
                code = 0
            finally:
                os._exit(code)
        child_commands.close()
        exits.close()

    def run(self) -> float:
        self._commands.sendall(b"r")
        reply = self._commands.recv(8)
        if len(reply) != 8:
            raise RuntimeError("the driver process ended without a result (see its traceback above)")
        return struct.unpack("d", reply)[0]

    def close(self) -> None:
        self._commands.close()  # the child's recv returns b"": it leaves
        os.waitpid(self.pid, 0)
        if self._exit_thread is not None:
            self._exit_thread.join()  # its peer went with the child
        self._exits.close()
        self.rig.close()


_EVENTFD_ONE = struct.pack("<Q", 1)


def _exit_to_vmm(channel: socket.socket) -> None:
    """The driver's side of an INTERRUPT_ACK write: trap to the VMM and wait until it is done."""
    channel.sendall(b"a")
    channel.recv(1)


def _serve_exits(channel: socket.socket, ack: Callable[[], None]) -> None:
    while channel.recv(1) == b"a":
        ack()
        channel.sendall(b"d")


def device_run(path: str, fmt: str, work: Workload, offsets: List[int], use_iothread: bool,
               workers: int = blk.DEFAULT_WORKERS, transport: str = "mmio", packed: bool = False) -> float:
    rig = DeviceRig(path, fmt, work, use_iothread, workers, transport, packed)
    try:
        return rig.run(offsets)
    finally:
        rig.close()


# --- images ----------------------------------------------------------------------------------------

def make_images(directory: str, size: int, formats: List[str]) -> dict:
    raw = os.path.join(directory, "bench.raw")
    with open(raw, "wb") as f:
        rng = random.Random(7)
        chunk = rng.getrandbits(8 * MiB).to_bytes(MiB, "little")
        for _ in range(size // MiB):
            f.write(chunk)
        os.fsync(f.fileno())  # no write-back of these pages during the measurements
    paths = {"raw": raw}
    if "qcow2" in formats:
        qcow2 = os.path.join(directory, "bench.qcow2")
        if img_main(["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]) not in (0, None):
            raise RuntimeError("pyhv img convert failed")
        with open(qcow2, "rb+") as f:
            os.fsync(f.fileno())
        paths["qcow2"] = qcow2
    return {fmt: paths[fmt] for fmt in formats}


def best(repeat: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeat))


def rate(work: Workload, seconds: float) -> str:
    if work.size >= MiB:
        return f"{work.count * work.size / MiB / seconds:9.0f} MiB/s"
    return f"{work.count / seconds / 1000:7.1f}k IOPS"


# --- interrupt paths under KVM --------------------------------------------------------------------

def interrupt_costs(count: int, repeat: int) -> None:
    from pyhv.accel.base import Platform
    from pyhv.accel.kvm import KvmAccelerator
    from pyhv.bus import Bus
    from pyhv.cpu_model import pyhv64
    from pyhv.devices.pci.sinks import KvmMsiSink
    from pyhv.kvm.vm import irqchip_route, msi_route
    from pyhv.lifecycle import Lifecycle

    memory = GuestMemory(2 * MiB)
    accel = KvmAccelerator(Platform(memory, Bus("pio"), Bus("mmio"), Lifecycle(), pyhv64()))
    vm = accel.vm
    line_gsi, irqfd_gsi, msi_gsi = 16, 17, 24
    ioapic = 2  # KVM_IRQCHIP_IOAPIC
    vm.set_gsi_routing([irqchip_route(gsi, ioapic, gsi) for gsi in (line_gsi, irqfd_gsi)]
                       + [msi_route(msi_gsi, 0xFEE0_0000, 0x31)])
    line_event, msi_event = EventFd(), EventFd()
    vm.irqfd(line_event.fd, irqfd_gsi)
    vm.irqfd(msi_event.fd, msi_gsi)
    sink = KvmMsiSink(vm.fd)
    line = accel.irq_line(line_gsi)

    def per_call(fn: Callable[[], None]) -> float:
        def once() -> float:
            start = time.perf_counter()
            for _ in range(count):
                fn()
            return time.perf_counter() - start
        return best(repeat, once) / count * 1e6

    def raise_and_lower() -> None:
        line.set_level(True)  # the I/O thread raises ...
        line.set_level(False)  # ... the vCPU's InterruptACK lowers: two ioctls per interrupt

    rows = [
        ("INTx/virtio-mmio: KVM_IRQ_LINE raise + lower", per_call(raise_and_lower)),
        ("INTx/virtio-mmio: irqfd eventfd write (edge; no resample)", per_call(line_event.signal)),
        ("MSI-X: KVM_SIGNAL_MSI", per_call(lambda: sink.send_msi(0xFEE0_0000, 0x31))),
        ("MSI-X: irqfd eventfd write on an MSI route", per_call(msi_event.signal)),
    ]
    print(f"\ninterrupt injection from a device thread, {count} per run, best of {repeat} (µs per interrupt):")
    for name, micros in rows:
        print(f"  {name:<60} {micros:6.2f}")
    line_event.close()
    msi_event.close()
    accel.close()


# --- main ------------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small-count", type=int, default=20000, help="4 KiB requests per run")
    parser.add_argument("--formats", default="raw,qcow2")
    parser.add_argument("--inline", action="store_true", help="also the synchronous path (no I/O thread)")
    parser.add_argument("--irq", action="store_true", help="also the KVM interrupt-injection paths")
    parser.add_argument("--workers", type=int, default=blk.DEFAULT_WORKERS,
                        help="the device's worker threads for long requests (0: none; host xN: N = max(2, workers))")
    parser.add_argument("--warmup-requests", type=int, default=10000,
                        help="untimed requests per runner and workload before the timed runs")
    parser.add_argument("--transport", choices=("mmio", "pci"), default="mmio",
                        help="virtio-mmio with INTx (default) or virtio-pci with MSI-X, as -M pc gives")
    parser.add_argument("--rings", choices=("split", "packed"), default="split",
                        help="the virtqueue layout: split (default) or packed (-device ...,packed=on)")
    parser.add_argument("--driver", choices=("process", "thread"), default="process",
                        help="the mock guest driver in a forked process (default: as a vCPU, outside "
                             "the VMM's interpreter) or in a thread beside the device (sharing its GIL)")
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    size = args.size_mib * MiB
    print(f"{platform.python_implementation()} {platform.python_version()}, {host_summary()}; "
          f"{args.size_mib} MiB images in {args.dir}; page cache on both sides; best of {args.repeat}")
    directory = tempfile.mkdtemp(prefix="pyhv-bench-blk-", dir=args.dir)
    try:
        images = make_images(directory, size, formats)
        modes = [("iothread", True)] + ([("inline", False)] if args.inline else [])
        # The host with N threads stays beside the one-thread host, N at least 2 (the device's
        # I/O thread and the guest's vCPU are two threads too).
        threads = max(2, args.workers)
        host_columns = f"{'host':>16}" + (f" {'host x' + str(threads):>16}" if threads > 1 else "")
        print(f"{'format':<6} {'workload':<17} {'depth':>5} {host_columns} "
              + " ".join(f"{name:>16} {'ratio':>6}" + (f" {'vs x' + str(threads):>6}" if threads > 1 else "")
                         for name, _ in modes)
              + f"   (virtio-{args.transport}, {args.rings} rings, device workers: {args.workers}, "
                f"driver in a {args.driver})")
        for fmt, path in images.items():
            for work in workloads(size, args.small_count):
                offsets = work.offsets(size)
                host_path = path
                if fmt != "raw" and work.write:
                    host_path = path + ".host-copy"
                    if not os.path.exists(host_path):
                        shutil.copyfile(path, host_path)
                        with open(host_path, "rb+") as f:
                            os.fsync(f.fileno())
                # Host and device runs alternate, so both meet the same load on the shared machine.
                hosts = [lambda: host_run(host_path, work, offsets)]
                if threads > 1:
                    hosts.append(lambda: host_run(host_path, work, offsets, threads))
                driver: Optional[DriverProcess] = None
                if args.driver == "process":
                    driver = DriverProcess(DeviceRig(path, fmt, work, True, args.workers, args.transport,
                                                     args.rings == "packed", own_process=True), offsets)
                runners = hosts + [
                    driver.run if use and driver is not None
                    else lambda use=use: device_run(path, fmt, work, offsets, use, args.workers,
                                                    args.transport, args.rings == "packed")
                    for _n, use in modes]
                for runner in runners:
                    for _ in range(-(-args.warmup_requests // work.count)):
                        runner()
                times = [[] for _ in runners]
                for _ in range(args.repeat):
                    for runner, seen in zip(runners, times):
                        seen.append(runner())
                if driver is not None:
                    driver.close()
                host_times = [min(t) for t in times[:len(hosts)]]
                cells = [f"{rate(work, min(t)):>16} " + " ".join(f"{h / min(t):6.0%}" for h in host_times)
                         for t in times[len(hosts):]]
                print(f"{fmt:<6} {work.name:<17} {work.depth:>5} "
                      + " ".join(f"{rate(work, h):>16}" for h in host_times) + " " + " ".join(cells), flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.irq:
        interrupt_costs(20000, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

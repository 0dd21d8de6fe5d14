"""The virtio-mmio transport, version 2 (virtio 1.2, 4.2): a register window on the MMIO bus.

The window is :data:`MMIO_WINDOW_SIZE` bytes: 32-bit registers below 0x100, the device's
config space from 0x100. The interrupt is level-triggered: the line is high while
InterruptStatus has a bit set, and the driver lowers it by writing InterruptACK.

With :meth:`VirtioMmioTransport.use_iothread`, queues are processed on an I/O thread: a
write to QueueNotify signals the queue's eventfd instead of running the queue, and where the
accelerator offers a doorbell (KVM_IOEVENTFD, datamatch on the queue index) that write never
reaches this object at all.
"""

from __future__ import annotations

import functools
from typing import Callable, List, Optional

from ...irq import IrqLine
from .device import VirtioDevice
from .iothread import Doorbell, EventFd, IoThread
from .isr import InterruptStatus

MMIO_WINDOW_SIZE = 0x200
MAGIC_VALUE = 0x7472_6976  # "virt"
VERSION = 2
VENDOR_ID = 0x5648_5950  # "PYHV"
CONFIG_OFFSET = 0x100

# Register offsets (virtio 1.2, table 4.1).
MAGIC = 0x000
VERSION_REG = 0x004
DEVICE_ID = 0x008
VENDOR = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_LEN_HIGH = 0x0B4
SHM_BASE_LOW = 0x0B8
SHM_BASE_HIGH = 0x0BC
CONFIG_GENERATION = 0x0FC

# Queue address registers: offset -> (queue attribute, True for the high half).
_QUEUE_ADDRESS = {
    QUEUE_DESC_LOW: ("desc_table", False), QUEUE_DESC_HIGH: ("desc_table", True),
    QUEUE_DRIVER_LOW: ("avail_ring", False), QUEUE_DRIVER_HIGH: ("avail_ring", True),
    QUEUE_DEVICE_LOW: ("used_ring", False), QUEUE_DEVICE_HIGH: ("used_ring", True),
}


class VirtioMmioTransport:
    """A bus Device exposing one :class:`VirtioDevice` through the virtio-mmio registers."""

    def __init__(self, device: VirtioDevice, irq: IrqLine) -> None:
        self.device = device
        self.irq = irq
        self._status = InterruptStatus(irq.set_level)
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self._kicks: List[EventFd] = []  # per queue, once an I/O thread serves them
        self._iothread: Optional[IoThread] = None
        self._undo_doorbells: List[Callable[[], None]] = []
        self.notify_writes = 0  # QueueNotify writes that reached the register (an exit under KVM)
        device.interrupt = self._raise

    # --- the I/O thread ----------------------------------------------------------------------
    def use_iothread(self, iothread: IoThread, doorbell: Optional[Doorbell] = None,
                     base: Optional[int] = None) -> int:
        """Serve every queue on ``iothread``; with ``doorbell`` and the window's ``base``, ask
        the accelerator to signal the queues' eventfds itself. The number of queues whose
        notify the accelerator took over."""
        if self._iothread is not None:
            return len(self._undo_doorbells)
        self._iothread = iothread
        for index in range(len(self.device.queues)):
            name = f"{self.device.name} queue {index}" + (f" at {base:#x}" if base is not None else "")
            event = iothread.add_queue(name, functools.partial(self.device.notify, index))
            self._kicks.append(event)
            if doorbell is not None and base is not None:
                undo = doorbell(base + QUEUE_NOTIFY, 4, index, event.fd)
                if undo is not None:
                    self._undo_doorbells.append(undo)
        return len(self._undo_doorbells)

    def leave_iothread(self) -> None:
        """Back to processing queues on the notifying thread (stop the I/O thread first)."""
        for undo in self._undo_doorbells:
            undo()
        self._undo_doorbells = []
        iothread, self._iothread = self._iothread, None
        for event in self._kicks:
            if iothread is not None:
                iothread.remove_queue(event)
        self._kicks = []

    def _notify(self, index: int) -> None:
        self.notify_writes += 1
        if index < len(self._kicks):
            self._kicks[index].signal()
        else:
            self.device.notify(index)

    # --- interrupts -----------------------------------------------------------------------
    # Not under the device's lock: the I/O thread raises interrupts while the vCPU thread may
    # hold that one waiting for the I/O thread (a reset). isr.py says how the line is driven.
    @property
    def interrupt_status(self) -> int:
        return self._status.bits

    def _raise(self, cause: int) -> None:
        self._status.raise_bits(cause)

    def _ack(self, causes: int) -> None:
        self._status.clear(causes)

    # --- bus Device -------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self.device.lock:
            if offset >= CONFIG_OFFSET:
                return self.device.read_config(offset - CONFIG_OFFSET, size)
            if size != 4 or offset % 4:
                return 0  # registers are 32 bits wide and aligned (4.2.2.2)
            return self._read_register(offset)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.device.lock:
            if offset >= CONFIG_OFFSET:
                self.device.write_config(offset - CONFIG_OFFSET, size, value)
            elif size == 4 and offset % 4 == 0:
                self._write_register(offset, value & 0xFFFF_FFFF)

    def _selected_queue(self):
        queues = self.device.queues
        return queues[self.queue_sel] if self.queue_sel < len(queues) else None

    def _read_register(self, offset: int) -> int:
        device = self.device
        queue = self._selected_queue()
        if offset == MAGIC:
            return MAGIC_VALUE
        if offset == VERSION_REG:
            return VERSION
        if offset == DEVICE_ID:
            return device.device_id
        if offset == VENDOR:
            return VENDOR_ID
        if offset == DEVICE_FEATURES:
            return device.device_features(self.device_features_sel)
        if offset == QUEUE_NUM_MAX:
            return queue.max_size if queue is not None else 0
        if offset == QUEUE_READY:
            return int(queue is not None and queue.ready)
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return device.status
        if offset == CONFIG_GENERATION:
            return device.config_generation
        if offset in (SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH):
            return 0xFFFF_FFFF  # no shared memory regions: length and base read as -1
        if offset in _QUEUE_ADDRESS and queue is not None:
            attr, high = _QUEUE_ADDRESS[offset]
            address = getattr(queue, attr)
            return address >> 32 if high else address & 0xFFFF_FFFF
        return 0  # write-only and reserved registers

    def _write_register(self, offset: int, value: int) -> None:
        device = self.device
        queue = self._selected_queue()
        if offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            device.set_driver_features(self.driver_features_sel, value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == QUEUE_NOTIFY:
            self._notify(value & 0xFFFF)
        elif offset == INTERRUPT_ACK:
            self._ack(value)
        elif offset == STATUS:
            device.set_status(value)
            if value == 0:
                self._reset_transport()
        elif queue is None or queue.ready and offset != QUEUE_READY:
            pass  # a missing queue, or one whose set-up is frozen while it is enabled
        elif offset == QUEUE_NUM:
            queue.size = value
        elif offset == QUEUE_READY:
            queue.ready = bool(value & 1)
            device.queue_ready_changed(self.queue_sel)
        elif offset in _QUEUE_ADDRESS:
            attr, high = _QUEUE_ADDRESS[offset]
            address = getattr(queue, attr)
            if high:
                address = (address & 0xFFFF_FFFF) | (value << 32)
            else:
                address = (address & ~0xFFFF_FFFF) | value
            setattr(queue, attr, address)

    def _reset_transport(self) -> None:
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self._ack(0xFFFF_FFFF)

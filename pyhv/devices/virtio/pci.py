"""The virtio 1.x modern PCI transport (virtio 1.2, 4.1): a PCI function hosting a VirtioDevice.

Vendor 0x1AF4, device 0x1040 + the device type, revision 1 (no legacy interface). Its
registers live in one 64-bit prefetchable memory BAR, laid out as QEMU does:

    0x0000 common configuration    0x1000 ISR status
    0x2000 device configuration    0x3000 notifications (4 bytes per queue)

and the vendor-specific capabilities (ID 0x09) point the driver at each, plus the
VIRTIO_PCI_CAP_PCI_CFG window through config space. The MSI-X table and PBA sit in BAR 1:
one vector for configuration changes and one per queue, as the driver assigns them. While
MSI-X is off, interrupts go through INTx and the ISR, whose read clears it and lowers the line.

The same device objects as virtio-mmio: the transport sets ``device.interrupt`` and, since a
used-buffer interrupt must pick its queue's vector, also the instance's ``signal_used``.

With :meth:`VirtioPciFunction.use_iothread` the queues are processed on an I/O thread; a
doorbell from the accelerator (KVM_IOEVENTFD on each queue's 2-byte notify address, the
width Linux writes) follows the BAR wherever the guest moves it.
"""

from __future__ import annotations

import functools
import struct
from typing import Callable, List, Optional

from ..pci.config import Bar, BarKind, PciFunction
from ..pci.msix import NO_VECTOR, MsiSink, MsixVectors
from . import spec
from .device import VirtioDevice, Virtqueue
from .isr import InterruptStatus
from .iothread import Doorbell, EventFd, IoThread

VENDOR_ID = 0x1AF4
DEVICE_ID_BASE = 0x1040
REVISION = 1
SUBSYSTEM_ID = 0x1100  # QEMU's subsystem ID for modern virtio devices; Linux does not look at it

CLASS_CODES = {
    spec.ID_NET: 0x02_00_00,  # network, ethernet
    spec.ID_BLOCK: 0x01_00_00,  # mass storage, SCSI (what QEMU reports)
    spec.ID_CONSOLE: 0x07_80_00,  # communication, other
    spec.ID_ENTROPY: 0x00_FF_00,  # unclassified
}

MSIX_BAR = 1
MODERN_BAR = 4
MODERN_BAR_SIZE = 0x4000
COMMON_OFFSET, COMMON_SIZE = 0x0000, 0x1000
ISR_OFFSET, ISR_SIZE = 0x1000, 0x1000
DEVICE_OFFSET, DEVICE_SIZE = 0x2000, 0x1000
NOTIFY_OFFSET, NOTIFY_SIZE = 0x3000, 0x1000
NOTIFY_OFF_MULTIPLIER = 4
NOTIFY_WIDTH = 2  # Linux's vp_notify writes the queue index as 16 bits

CAP_ID_VENDOR = 0x09
CAP_COMMON_CFG = 1
CAP_NOTIFY_CFG = 2
CAP_ISR_CFG = 3
CAP_DEVICE_CFG = 4
CAP_PCI_CFG = 5

# struct virtio_pci_common_cfg (4.1.4.3).
DEVICE_FEATURE_SELECT = 0x00
DEVICE_FEATURE = 0x04
DRIVER_FEATURE_SELECT = 0x08
DRIVER_FEATURE = 0x0C
CONFIG_MSIX_VECTOR = 0x10
NUM_QUEUES = 0x12
DEVICE_STATUS = 0x14
CONFIG_GENERATION = 0x15
QUEUE_SELECT = 0x16
QUEUE_SIZE = 0x18
QUEUE_MSIX_VECTOR = 0x1A
QUEUE_ENABLE = 0x1C
QUEUE_NOTIFY_OFF = 0x1E
QUEUE_DESC = 0x20
QUEUE_DRIVER = 0x28
QUEUE_DEVICE = 0x30
COMMON_CFG_LENGTH = 0x38
_COMMON = struct.Struct("<IIIIHHBBHHHHHQQQ")

_QUEUE_ADDRESS = {QUEUE_DESC: "desc_table", QUEUE_DRIVER: "avail_ring", QUEUE_DEVICE: "used_ring"}


def _cap_body(cfg_type: int, bar: int, offset: int, length: int, extra: bytes = b"") -> bytes:
    """A struct virtio_pci_cap after its ID and next bytes: cap_len first."""
    return struct.pack("<BBBBxxII", 16 + len(extra), cfg_type, bar, 0, offset, length) + extra


class VirtioPciFunction(PciFunction):
    """One virtio device behind the modern PCI transport."""

    def __init__(self, device: VirtioDevice, msi_sink: MsiSink) -> None:
        super().__init__(VENDOR_ID, DEVICE_ID_BASE + device.device_id,
                         CLASS_CODES.get(device.device_id, 0x00_FF_00), REVISION,
                         VENDOR_ID, SUBSYSTEM_ID)
        self.device = device
        queue_count = len(device.queues)
        self.msix = MsixVectors(queue_count + 1, msi_sink)
        self.msix.install(self, MSIX_BAR)
        self.add_bar(Bar(MODERN_BAR, BarKind.MEM64, MODERN_BAR_SIZE, _ModernRegion(self), prefetchable=True))
        self._add_virtio_caps()
        self._isr = InterruptStatus(self.set_intx)
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self.config_vector = NO_VECTOR
        self.queue_vectors: List[int] = [NO_VECTOR] * queue_count
        self._kicks: List[EventFd] = []
        self._iothread: Optional[IoThread] = None
        self._doorbell: Optional[Doorbell] = None
        self._doorbell_base: Optional[int] = None
        self._undo_doorbells: List[Callable[[], None]] = []
        self.notify_writes = 0  # notifications that reached the BAR (an exit under KVM)
        device.interrupt = self._interrupt
        device.signal_used = self._signal_used  # type: ignore[assignment]

    def _add_virtio_caps(self) -> None:
        self.add_capability(CAP_ID_VENDOR, _cap_body(CAP_COMMON_CFG, MODERN_BAR, COMMON_OFFSET, COMMON_SIZE))
        self.add_capability(CAP_ID_VENDOR, _cap_body(CAP_ISR_CFG, MODERN_BAR, ISR_OFFSET, ISR_SIZE))
        self.add_capability(CAP_ID_VENDOR, _cap_body(CAP_DEVICE_CFG, MODERN_BAR, DEVICE_OFFSET, DEVICE_SIZE))
        self.add_capability(CAP_ID_VENDOR, _cap_body(CAP_NOTIFY_CFG, MODERN_BAR, NOTIFY_OFFSET, NOTIFY_SIZE,
                                                     struct.pack("<I", NOTIFY_OFF_MULTIPLIER)))
        # The driver picks bar, offset and length, then reads or writes pci_cfg_data.
        writable = b"\x00\x00\xff\x00\x00\x00" + b"\xff" * 12
        offset = self.add_capability(CAP_ID_VENDOR, _cap_body(CAP_PCI_CFG, 0, 0, 0, bytes(4)), writable)
        self.pci_cfg_offset = offset
        self.add_config_hook(offset + 16, 4, self._pci_cfg_read, self._pci_cfg_write)

    # --- VIRTIO_PCI_CAP_PCI_CFG window (4.1.4.9) ----------------------------------------------
    def _pci_cfg_target(self):
        base = self.pci_cfg_offset
        bar, offset, length = self.config[base + 4], self.get(base + 8, 4), self.get(base + 12, 4)
        if bar not in self.bars or length not in (1, 2, 4) or offset % length:
            return None
        region = self.bars[bar].region
        if offset + length > self.bars[bar].size:
            return None
        return region, offset, length

    def _pci_cfg_read(self, at: int, size: int) -> int:
        target = self._pci_cfg_target()
        if target is None:
            return self.get(at, size)
        region, offset, length = target
        data = region.read(offset, length).to_bytes(4, "little")
        start = at - (self.pci_cfg_offset + 16)
        return int.from_bytes(data[start:start + size], "little")

    def _pci_cfg_write(self, at: int, size: int, value: int) -> None:
        target = self._pci_cfg_target()
        if target is not None and at == self.pci_cfg_offset + 16:
            region, offset, length = target
            region.write(offset, length, value & ((1 << (8 * length)) - 1))

    # --- interrupts ----------------------------------------------------------------------------
    def _signal_used(self, queue: Virtqueue) -> None:
        if queue.needs_notification(self.device.memory):
            # Looked up each time: the device swaps its queue objects when the driver picks
            # the packed layout.
            self.queue_interrupt(self.device.queues.index(queue))

    # Interrupts never take the device's lock: the I/O thread raises them while the vCPU
    # thread may hold that one waiting for it (a reset). MSI-X messages need no lock here
    # (MsixVectors orders them against masking); INTx goes through the ISR bits (isr.py).
    @property
    def isr(self) -> int:
        return self._isr.bits

    def queue_interrupt(self, index: int) -> None:
        if self.msix.enabled:
            vector = self.queue_vectors[index]
            if vector != NO_VECTOR:
                self.msix.notify(vector)
            return
        self._isr.raise_bits(spec.INT_USED_BUFFER)

    def _interrupt(self, cause: int) -> None:
        if cause & spec.INT_CONFIG_CHANGE:
            # The bit is set before the notification, MSI-X or not (4.1.4.5.1).
            msix = self.msix.enabled
            self._isr.raise_bits(spec.INT_CONFIG_CHANGE, drive_line=not msix)
            if msix and self.config_vector != NO_VECTOR:
                self.msix.notify(self.config_vector)
        if cause & spec.INT_USED_BUFFER:
            for index in range(len(self.queue_vectors)):
                self.queue_interrupt(index)

    def read_isr(self) -> int:
        return self._isr.take()

    # --- common configuration ---------------------------------------------------------------------
    def _selected_queue(self):
        queues = self.device.queues
        return queues[self.queue_select] if self.queue_select < len(queues) else None

    def common_bytes(self) -> bytes:
        device = self.device
        queue = self._selected_queue()
        selected = self.queue_select < len(self.queue_vectors)
        return _COMMON.pack(
            self.device_feature_select, device.device_features(self.device_feature_select),
            self.driver_feature_select,
            (device.acked_features >> (32 * self.driver_feature_select)) & 0xFFFF_FFFF
            if self.driver_feature_select <= 1 else 0,
            self.config_vector, len(device.queues), device.status, device.config_generation & 0xFF,
            self.queue_select, queue.size if queue else 0,
            self.queue_vectors[self.queue_select] if selected else NO_VECTOR,
            int(bool(queue and queue.ready)), self.queue_select if queue else 0,
            queue.desc_table if queue else 0, queue.avail_ring if queue else 0, queue.used_ring if queue else 0)

    def read_common(self, offset: int, size: int) -> int:
        with self.device.lock:
            data = self.common_bytes()
            if offset + size > len(data):
                return 0
            return int.from_bytes(data[offset:offset + size], "little")

    def write_common(self, offset: int, size: int, value: int) -> None:
        with self.device.lock:
            self._write_common(offset, size, value)

    def _write_common(self, offset: int, size: int, value: int) -> None:
        device = self.device
        queue = self._selected_queue()
        if offset == DEVICE_FEATURE_SELECT and size == 4:
            self.device_feature_select = value
        elif offset == DRIVER_FEATURE_SELECT and size == 4:
            self.driver_feature_select = value
        elif offset == DRIVER_FEATURE and size == 4:
            device.set_driver_features(self.driver_feature_select, value)
        elif offset == CONFIG_MSIX_VECTOR and size == 2:
            self.config_vector = self._checked_vector(value)
        elif offset == DEVICE_STATUS and size == 1:
            device.set_status(value)
            if value == 0:
                self._reset_transport()
        elif offset == QUEUE_SELECT and size == 2:
            self.queue_select = value
        elif queue is None:
            pass
        elif offset == QUEUE_MSIX_VECTOR and size == 2:
            self.queue_vectors[self.queue_select] = self._checked_vector(value)
        elif queue.ready:
            pass  # a queue's set-up is frozen once it is enabled
        elif offset == QUEUE_SIZE and size == 2:
            queue.size = value
        elif offset == QUEUE_ENABLE and size == 2:
            if value & 1:  # the driver never writes 0 (4.1.4.3.2)
                queue.ready = True
                device.queue_ready_changed(self.queue_select)
        else:
            self._write_queue_address(queue, offset, size, value)

    @staticmethod
    def _write_queue_address(queue: Virtqueue, offset: int, size: int, value: int) -> None:
        base = offset & ~7
        attr = _QUEUE_ADDRESS.get(base)
        if attr is None or size not in (4, 8) or offset % size:
            return
        address = getattr(queue, attr)
        if size == 8:
            address = value
        elif offset == base:
            address = (address & ~0xFFFF_FFFF) | value
        else:
            address = (address & 0xFFFF_FFFF) | (value << 32)
        setattr(queue, attr, address)

    def _checked_vector(self, vector: int) -> int:
        """A vector the table has, else NO_VECTOR, which the driver reads back as a refusal."""
        return vector if vector < self.msix.vector_count else NO_VECTOR

    def _reset_transport(self) -> None:
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self.config_vector = NO_VECTOR
        self.queue_vectors = [NO_VECTOR] * len(self.queue_vectors)
        self._isr.take()

    # --- notifications --------------------------------------------------------------------------------
    def notify(self, offset: int) -> None:
        index = offset // NOTIFY_OFF_MULTIPLIER
        self.notify_writes += 1
        if index < len(self._kicks):
            self._kicks[index].signal()
            return
        with self.device.lock:
            self.device.notify(index)

    # --- the I/O thread ---------------------------------------------------------------------------------
    def use_iothread(self, iothread: IoThread, doorbell: Optional[Doorbell] = None) -> None:
        """Serve every queue on ``iothread``; with ``doorbell``, ask the accelerator to signal
        the queues' eventfds on writes to their notify addresses, wherever the BAR is placed.
        Call after the function is plugged (the bus sets ``mappings_changed`` then)."""
        if self._iothread is not None:
            return
        self._iothread = iothread
        for index in range(len(self.device.queues)):
            self._kicks.append(iothread.add_queue(f"{self.device.name} queue {index} (PCI)",
                                                  functools.partial(self.device.notify, index)))
        if doorbell is not None:
            self._doorbell = doorbell
            bus_update = self.mappings_changed

            def mappings_changed(function: "VirtioPciFunction") -> None:
                bus_update(function)
                self._place_doorbells()

            self.mappings_changed = mappings_changed  # type: ignore[assignment]
            self._place_doorbells()

    @property
    def doorbell_base(self) -> Optional[int]:
        """The notify area's guest address while the accelerator serves it, else None."""
        return self._doorbell_base if self._undo_doorbells else None

    def _place_doorbells(self) -> None:
        base = self.bars[MODERN_BAR].address
        if base == self._doorbell_base:
            return
        self._remove_doorbells()
        self._doorbell_base = base
        if base is None or self._doorbell is None:
            return
        for index, event in enumerate(self._kicks):
            undo = self._doorbell(base + NOTIFY_OFFSET + NOTIFY_OFF_MULTIPLIER * index, NOTIFY_WIDTH, None, event.fd)
            if undo is not None:
                self._undo_doorbells.append(undo)

    def _remove_doorbells(self) -> None:
        for undo in self._undo_doorbells:
            undo()
        self._undo_doorbells = []

    def leave_iothread(self) -> None:
        """Back to processing queues on the notifying thread (stop the I/O thread first)."""
        self._remove_doorbells()
        self._doorbell = None
        self._doorbell_base = None
        iothread, self._iothread = self._iothread, None
        for event in self._kicks:
            if iothread is not None:
                iothread.remove_queue(event)
        self._kicks = []


class _ModernRegion:
    """The modern BAR: dispatches to the four register blocks by offset."""

    def __init__(self, function: VirtioPciFunction) -> None:
        self.function = function

    def read(self, offset: int, size: int) -> int:
        function = self.function
        if offset < COMMON_OFFSET + COMMON_SIZE:
            return function.read_common(offset, size)
        if offset < ISR_OFFSET + ISR_SIZE:
            return function.read_isr() if offset == ISR_OFFSET else 0
        if offset < DEVICE_OFFSET + DEVICE_SIZE:
            with function.device.lock:
                return function.device.read_config(offset - DEVICE_OFFSET, size)
        return 0  # notifications are write-only

    def write(self, offset: int, size: int, value: int) -> None:
        function = self.function
        if offset < COMMON_OFFSET + COMMON_SIZE:
            function.write_common(offset, size, value)
        elif offset < ISR_OFFSET + ISR_SIZE:
            pass  # read-only
        elif offset < DEVICE_OFFSET + DEVICE_SIZE:
            with function.device.lock:
                function.device.write_config(offset - DEVICE_OFFSET, size, value)
        elif offset < NOTIFY_OFFSET + NOTIFY_SIZE:
            function.notify(offset - NOTIFY_OFFSET)

"""What every virtio device shares, whatever transport (MMIO, PCI) carries it.

A device owns its queues, features, status and config space; the transport maps them to
registers and gives the device an ``interrupt(cause)`` callback. The device-status state
machine (virtio 1.2, 3.1) lives here: a write of 0 resets, FEATURES_OK is refused for
features the device never offered, DRIVER_OK activates the device.

Queue work may run on an I/O thread (iothread.py) while the vCPU thread writes registers.
Two locks keep them apart, always taken in this order: ``lock`` (the transport's, around
every register access) then ``queue_lock`` (around queue processing, status changes and
reset, so a reset waits for the requests in flight). The transports raise interrupts under
a lock of their own, never under ``lock``, so the I/O thread never waits for the vCPU.

A guest that breaks a queue rule puts the device in DEVICE_NEEDS_RESET: the device logs
it once, raises a configuration-change interrupt and processes nothing until the driver
resets it. The host carries on.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, List, Sequence, Union

from ...memory import GuestMemory
from . import spec
from .packed import PackedQueue
from .queue import SplitQueue, VirtqueueError

log = logging.getLogger("pyhv.virtio")

Interrupt = Callable[[int], None]  # called with spec.INT_USED_BUFFER or spec.INT_CONFIG_CHANGE
Virtqueue = Union[SplitQueue, PackedQueue]

# Offered by every device: the ring features both queue layouts implement. VIRTIO_F_RING_PACKED
# is offered only by a device created with ``packed=True`` (QEMU's packed=on, off by default).
COMMON_FEATURES = (spec.bit(spec.F_VERSION_1) | spec.bit(spec.F_EVENT_IDX)
                   | spec.bit(spec.F_INDIRECT_DESC))


class VirtioDevice:
    """Base of blk, rng, console: subclasses give ``device_id``, ``name``, the config space
    and :meth:`process_queue`."""

    device_id = 0
    name = "virtio"
    # True where queue work may leave the vCPU thread (the machine then gives the device an
    # I/O thread); devices with back-end threads of their own (console, net) keep it False.
    runs_on_iothread = False

    def __init__(self, memory: GuestMemory, queue_sizes: Sequence[int], features: int = 0,
                 packed: bool = False) -> None:
        self.memory = memory
        # Split until the driver accepts VIRTIO_F_RING_PACKED (see _use_ring_layout).
        self.queues: List[Virtqueue] = [SplitQueue(size) for size in queue_sizes]
        self.avail_features = COMMON_FEATURES | features | (spec.bit(spec.F_RING_PACKED) if packed else 0)
        self.acked_features = 0
        self.status = 0
        self.config_generation = 0
        self.active = False
        self.broken = False
        # Taken by the transport around every register access and by back-end threads
        # (console input) around queue work.
        self.lock = threading.RLock()
        # Taken around queue processing, status changes and reset (see the module docstring).
        self.queue_lock = threading.RLock()
        self.interrupt: Interrupt = lambda cause: None

    # --- features ---------------------------------------------------------------------------
    def has_feature(self, feature_bit: int) -> bool:
        return bool(self.acked_features >> feature_bit & 1)

    def set_driver_features(self, select: int, value: int) -> None:
        """Half ``select`` (0: bits 0-31, 1: bits 32-63) of the driver's feature word."""
        if self.status & spec.STATUS_FEATURES_OK or select > 1:
            return  # features are frozen once FEATURES_OK is set (3.1.1)
        shift = 32 * select
        self.acked_features = (self.acked_features & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)

    def device_features(self, select: int) -> int:
        return (self.avail_features >> (32 * select)) & 0xFFFF_FFFF if select <= 1 else 0

    # --- status -----------------------------------------------------------------------------
    def set_status(self, value: int) -> None:
        with self.queue_lock:
            self._set_status(value & 0xFF)

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        newly = value & ~self.status
        self.status = value | (self.status & spec.STATUS_DEVICE_NEEDS_RESET)
        if newly & spec.STATUS_FEATURES_OK:
            if self._features_acceptable():
                self._use_ring_layout()
            else:
                self.status &= ~spec.STATUS_FEATURES_OK  # the driver reads it back and gives up
        if newly & spec.STATUS_DRIVER_OK and self.status & spec.STATUS_FEATURES_OK:
            self._activate()

    def _features_acceptable(self) -> bool:
        unknown = self.acked_features & ~self.avail_features
        if unknown:
            log.warning("%s: driver accepted features %#x that were not offered", self.name, unknown)
            return False
        if not self.has_feature(spec.F_VERSION_1):
            log.warning("%s: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)",
                        self.name)
            return False
        return True

    def _use_ring_layout(self) -> None:
        """Make every queue the kind the features ask for. The driver sets its queues up
        after FEATURES_OK (3.1.1), but whatever it wrote before is carried over."""
        kind = PackedQueue if self.has_feature(spec.F_RING_PACKED) else SplitQueue
        for index, queue in enumerate(self.queues):
            if type(queue) is kind:
                continue
            fresh = kind(queue.max_size)
            fresh.size, fresh.ready = queue.size, queue.ready
            fresh.desc_table, fresh.avail_ring, fresh.used_ring = queue.desc_table, queue.avail_ring, queue.used_ring
            self.queues[index] = fresh

    def _activate(self) -> None:
        for queue in self.queues:
            queue.event_idx = self.has_feature(spec.F_EVENT_IDX)
            queue.indirect = self.has_feature(spec.F_INDIRECT_DESC)
        for index, queue in enumerate(self.queues):
            if queue.ready and not self._validate_queue(index):
                return
        self.active = True
        self.activated()

    def queue_ready_changed(self, index: int) -> None:
        """The transport saw QueueReady written; a queue enabled after DRIVER_OK is checked now."""
        with self.queue_lock:
            if self.active and self.queues[index].ready:
                self._validate_queue(index)

    def _validate_queue(self, index: int) -> bool:
        try:
            self.queues[index].validate(self.memory)
        except VirtqueueError as err:
            self.fail(index, err)
            return False
        return True

    def reset(self) -> None:
        """Back to the initial state; waits for a batch of requests in flight on another thread."""
        with self.queue_lock:
            self.status = 0
            self.acked_features = 0
            self.active = False
            self.broken = False
            for queue in self.queues:
                queue.reset()
            self.device_reset()

    # --- queue work ---------------------------------------------------------------------------
    def notify(self, index: int) -> None:
        """The driver kicked queue ``index`` (on the vCPU thread, or on an I/O thread)."""
        with self.queue_lock:
            if not self.active or self.broken or index >= len(self.queues) or not self.queues[index].ready:
                return
            self.run_queue(index)

    def run_queue(self, index: int) -> None:
        """Process queue ``index`` until the driver adds nothing more, turning a guest's
        rule-breaking into NEEDS_RESET. While it runs the driver is told not to kick: what
        it adds meanwhile is picked up by the same pass, without a notification (an exit,
        or a wake-up of the I/O thread) per request."""
        queue = self.queues[index]
        try:
            queue.disable_notifications(self.memory)
            while True:
                taken = queue.next_avail
                self.process_queue(index)
                more = queue.enable_notifications(self.memory)
                # A pass that took nothing (receive buffers waiting for host input) ends it.
                if self.broken or not more or queue.next_avail == taken:
                    return
                queue.disable_notifications(self.memory)
        except VirtqueueError as err:
            self.fail(index, err)

    def signal_used(self, queue: Virtqueue) -> None:
        """Interrupt the driver if it asked for one for the entries just used."""
        if queue.needs_notification(self.memory):
            self.interrupt(spec.INT_USED_BUFFER)

    def fail(self, index: int, err: Exception) -> None:
        if self.broken:
            return
        self.broken = True
        log.warning("%s: queue %d: %s; the device needs a reset", self.name, index, err)
        self.status |= spec.STATUS_DEVICE_NEEDS_RESET
        if self.status & spec.STATUS_DRIVER_OK:
            self.config_changed()

    def config_changed(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFFFF_FFFF
        self.interrupt(spec.INT_CONFIG_CHANGE)

    # --- config space ---------------------------------------------------------------------
    def read_config(self, offset: int, size: int) -> int:
        data = self.config_space()
        if offset < 0 or offset + size > len(data):
            return 0
        return int.from_bytes(data[offset:offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Most config fields are read-only; devices with writable ones override this."""

    # --- for subclasses -------------------------------------------------------------------
    def config_space(self) -> bytes:
        return b""

    def process_queue(self, index: int) -> None:
        raise NotImplementedError

    def activated(self) -> None:
        """DRIVER_OK was set and every ready queue is valid."""

    def device_reset(self) -> None:
        """Drop device-specific state on reset."""

    def close(self) -> None:
        """Release host resources (files, back-ends)."""

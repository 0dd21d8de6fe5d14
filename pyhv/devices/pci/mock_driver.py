"""A driver-side mock of PCI for tests: config access through ports 0xCF8/0xCFC, capability
walking, BAR discovery, MSI-X programming, and a virtio-pci driver on top.

Everything goes through the buses, the way a guest reaches the devices, so the tests exercise
config mechanism #1 and the BAR mappings as well as the device.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ...bus import Bus
from ...memory import GuestMemory
from ..virtio import pci as vpci
from ..virtio import spec
from ..virtio.mock_driver import Buffer, DataArea, MockQueue, align_up, mock_queue
from ..virtio.queue import DESCRIPTOR_SIZE
from . import config as cfg
from .host import CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT
from .msix import CAP_ID_MSIX, CONTROL_ENABLE, CONTROL_FUNCTION_MASK, ENTRY_SIZE


class MockPciConfig:
    """Configuration mechanism #1, as a guest kernel's ``pci_conf1_read/write`` uses it."""

    def __init__(self, pio: Bus) -> None:
        self.pio = pio

    def _select(self, bus: int, slot: int, function: int, offset: int) -> None:
        address = 0x8000_0000 | bus << 16 | slot << 11 | function << 8 | (offset & 0xFC)
        self.pio.write(CONFIG_ADDRESS_PORT, 4, address)

    def read(self, slot: int, offset: int, size: int, bus: int = 0, function: int = 0) -> int:
        self._select(bus, slot, function, offset)
        return self.pio.read(CONFIG_DATA_PORT + (offset & 3), size)

    def write(self, slot: int, offset: int, size: int, value: int, bus: int = 0, function: int = 0) -> None:
        self._select(bus, slot, function, offset)
        self.pio.write(CONFIG_DATA_PORT + (offset & 3), size, value)

    def capabilities(self, slot: int) -> List[Tuple[int, int]]:
        """(offset, ID) of every capability, walking the list as Linux does (bounded)."""
        found: List[Tuple[int, int]] = []
        if not self.read(slot, cfg.STATUS, 2) & cfg.STATUS_CAP_LIST:
            return found
        offset = self.read(slot, cfg.CAPABILITY_LIST, 1) & ~3
        while offset and len(found) < 48:
            found.append((offset, self.read(slot, offset, 1)))
            offset = self.read(slot, offset + 1, 1) & ~3
        return found

    def bar_address(self, slot: int, index: int) -> int:
        low = self.read(slot, cfg.BAR0 + 4 * index, 4)
        if low & cfg.BAR_SPACE_IO:
            return low & ~3
        address = low & ~0xF
        if low & cfg.BAR_MEM_TYPE_64:
            address |= self.read(slot, cfg.BAR0 + 4 * index + 4, 4) << 32
        return address

    def bar_size(self, slot: int, index: int) -> int:
        """The sizing protocol: write all-ones (decoding off), read the mask, restore."""
        offset = cfg.BAR0 + 4 * index
        command = self.read(slot, cfg.COMMAND, 2)
        self.write(slot, cfg.COMMAND, 2, command & ~(cfg.COMMAND_IO | cfg.COMMAND_MEMORY))
        original = self.read(slot, offset, 4)
        self.write(slot, offset, 4, 0xFFFF_FFFF)
        mask = self.read(slot, offset, 4)
        self.write(slot, offset, 4, original)
        is_64 = not original & cfg.BAR_SPACE_IO and original & cfg.BAR_MEM_TYPE_64
        if is_64:
            high = self.read(slot, offset + 4, 4)
            self.write(slot, offset + 4, 4, 0xFFFF_FFFF)
            mask |= self.read(slot, offset + 4, 4) << 32
            self.write(slot, offset + 4, 4, high)
        self.write(slot, cfg.COMMAND, 2, command)
        bits = 64 if is_64 else 32
        mask &= ~(0x3 if original & cfg.BAR_SPACE_IO else 0xF)
        return ((~mask) & ((1 << bits) - 1)) + 1 if mask else 0


class MockVirtioPciDriver:
    """Drives a virtio-pci function in ``slot`` the way Linux's virtio_pci_modern does."""

    def __init__(self, pio: Bus, mmio: Bus, memory: GuestMemory, slot: int,
                 ring_area: int = 0x10000, data_area: int = 0x100000) -> None:
        self.config = MockPciConfig(pio)
        self.mmio = mmio
        self.memory = memory
        self.slot = slot
        self.queues: List[Optional[MockQueue]] = []
        self.packed = False  # VIRTIO_F_RING_PACKED accepted
        self._ring_cursor = ring_area
        self._data = DataArea(memory, data_area)
        self.regions: Dict[int, int] = {}  # cfg_type -> guest physical address
        self.notify_multiplier = 0
        self.msix_cap = 0
        for offset, cap_id in self.config.capabilities(slot):
            if cap_id == CAP_ID_MSIX:
                self.msix_cap = offset
            elif cap_id == vpci.CAP_ID_VENDOR:
                self._read_virtio_cap(offset)

    def _read_virtio_cap(self, offset: int) -> None:
        cfg_type = self.config.read(self.slot, offset + 3, 1)
        bar = self.config.read(self.slot, offset + 4, 1)
        region_offset = self.config.read(self.slot, offset + 8, 4)
        if cfg_type == vpci.CAP_PCI_CFG or cfg_type in self.regions:
            return
        self.regions[cfg_type] = self.config.bar_address(self.slot, bar) + region_offset
        if cfg_type == vpci.CAP_NOTIFY_CFG:
            self.notify_multiplier = self.config.read(self.slot, offset + 16, 4)

    # --- register access ---------------------------------------------------------------------
    def common_read(self, offset: int, size: int) -> int:
        return self.mmio.read(self.regions[vpci.CAP_COMMON_CFG] + offset, size)

    def common_write(self, offset: int, size: int, value: int) -> None:
        self.mmio.write(self.regions[vpci.CAP_COMMON_CFG] + offset, size, value)

    def device_config_read(self, offset: int, size: int) -> int:
        return self.mmio.read(self.regions[vpci.CAP_DEVICE_CFG] + offset, size)

    def read_isr(self) -> int:
        return self.mmio.read(self.regions[vpci.CAP_ISR_CFG], 1)

    def status(self) -> int:
        return self.common_read(vpci.DEVICE_STATUS, 1)

    def set_status(self, value: int) -> None:
        self.common_write(vpci.DEVICE_STATUS, 1, value)

    # --- MSI-X --------------------------------------------------------------------------------
    def msix_table_address(self) -> int:
        table = self.config.read(self.slot, self.msix_cap + 4, 4)
        return self.config.bar_address(self.slot, table & 7) + (table & ~7)

    def program_vector(self, vector: int, address: int, data: int, masked: bool = False) -> None:
        entry = self.msix_table_address() + ENTRY_SIZE * vector
        self.mmio.write(entry, 4, address & 0xFFFF_FFFF)
        self.mmio.write(entry + 4, 4, address >> 32)
        self.mmio.write(entry + 8, 4, data)
        self.mmio.write(entry + 12, 4, int(masked))

    def set_msix(self, enable: bool, function_mask: bool = False) -> None:
        control = self.config.read(self.slot, self.msix_cap + 2, 2)
        control &= ~(CONTROL_ENABLE | CONTROL_FUNCTION_MASK)
        control |= (CONTROL_ENABLE if enable else 0) | (CONTROL_FUNCTION_MASK if function_mask else 0)
        self.config.write(self.slot, self.msix_cap + 2, 2, control)

    # --- initialisation (3.1.1) ------------------------------------------------------------------
    def features(self) -> int:
        words = []
        for select in (0, 1):
            self.common_write(vpci.DEVICE_FEATURE_SELECT, 4, select)
            words.append(self.common_read(vpci.DEVICE_FEATURE, 4))
        return words[0] | words[1] << 32

    def negotiate(self, drop_features: int = 0) -> int:
        self.set_status(0)
        self.set_status(spec.STATUS_ACKNOWLEDGE)
        self.set_status(spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER)
        accepted = self.features() & ~drop_features
        for select in (0, 1):
            self.common_write(vpci.DRIVER_FEATURE_SELECT, 4, select)
            self.common_write(vpci.DRIVER_FEATURE, 4, accepted >> (32 * select) & 0xFFFF_FFFF)
        self.set_status(spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK)
        if not self.status() & spec.STATUS_FEATURES_OK:
            raise AssertionError("the device refused FEATURES_OK")
        self.packed = bool(accepted >> spec.F_RING_PACKED & 1)
        return accepted

    def setup_queue(self, index: int, size: Optional[int] = None, vector: Optional[int] = None) -> MockQueue:
        self.common_write(vpci.QUEUE_SELECT, 2, index)
        size = self.common_read(vpci.QUEUE_SIZE, 2) if size is None else size
        queue = mock_queue(self.memory, self._ring_cursor, max(size, 1), self.packed)
        self._ring_cursor = align_up(queue.end, 4096)
        self.common_write(vpci.QUEUE_SIZE, 2, size)
        if vector is not None:
            self.common_write(vpci.QUEUE_MSIX_VECTOR, 2, vector)
        for offset, address in zip((vpci.QUEUE_DESC, vpci.QUEUE_DRIVER, vpci.QUEUE_DEVICE), queue.addresses):
            self.common_write(offset, 4, address & 0xFFFF_FFFF)
            self.common_write(offset + 4, 4, address >> 32)
        self.common_write(vpci.QUEUE_ENABLE, 2, 1)
        while len(self.queues) <= index:
            self.queues.append(None)
        self.queues[index] = queue
        return queue

    def start(self, queue_count: int, drop_features: int = 0, vectors: Sequence[Optional[int]] = ()) -> int:
        accepted = self.negotiate(drop_features)
        for index in range(queue_count):
            self.setup_queue(index, vector=vectors[index] if index < len(vectors) else None)
        self.set_status(spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK
                        | spec.STATUS_DRIVER_OK)
        return accepted

    def alloc(self, size: int, fill: int = 0, align: int = 16) -> int:
        """A fresh buffer in the data area, filled with ``fill`` (see :class:`DataArea`)."""
        return self._data.alloc(size, fill, align)

    def kick(self, index: int) -> None:
        self.common_write(vpci.QUEUE_SELECT, 2, index)
        notify_off = self.common_read(vpci.QUEUE_NOTIFY_OFF, 2)
        self.mmio.write(self.regions[vpci.CAP_NOTIFY_CFG] + notify_off * self.notify_multiplier, 2, index)

    def submit(self, index: int, buffers: Sequence[Buffer], indirect: bool = False) -> int:
        queue = self.queues[index]
        assert queue is not None
        if indirect:
            head = queue.add_indirect_chain(buffers, self.alloc(DESCRIPTOR_SIZE * len(buffers)))
        else:
            head = queue.add_chain(buffers)
        queue.publish(head)
        self.kick(index)
        return head


"""Hypothesis: whatever a guest writes to config space and to the MSI-X BAR, nothing raises,
and the buses hold exactly the BARs the functions say are mapped."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyhv.bus import Bus
from pyhv.devices.pci.builder import PciBuilder
from pyhv.devices.pci.mock_driver import MockPciConfig
from pyhv.devices.pci.sinks import RecordingMsiSink
from pyhv.devices.virtio.rng import VirtioRng
from pyhv.irq import RecordingIrqLine
from pyhv.memory import GuestMemory, MiB

MEMORY = GuestMemory(2 * MiB)

access = st.tuples(st.sampled_from([1, 2, 4]), st.integers(0, 0x103), st.integers(0, 0xFFFF_FFFF))
mmio_access = st.tuples(st.sampled_from([1, 2, 4, 8]), st.integers(0, 0x1100), st.integers(0, (1 << 64) - 1))


@settings(max_examples=150, deadline=None)
@given(st.lists(access, max_size=40), st.lists(mmio_access, max_size=20))
def test_random_config_and_table_writes(config_writes, table_writes):
    pio, mmio = Bus("pio"), Bus("mmio")
    builder = PciBuilder(pio, mmio, MEMORY, lambda gsi: RecordingIrqLine(), RecordingMsiSink(), ecam_base=None)
    placed = builder.add_virtio(VirtioRng(MEMORY), "virtio-rng-pci")
    function = placed.function
    table = function.bars[1].address
    conf = MockPciConfig(pio)
    for size, offset, value in config_writes:
        offset -= offset % size
        conf.write(placed.slot, offset, size, value & ((1 << (8 * size)) - 1))
        conf.read(placed.slot, offset, size)
    for size, offset, value in table_writes:
        if table is not None and function.bars[1].address == table:
            mmio.write(table + offset, size, value & ((1 << (8 * size)) - 1))
            mmio.read(table + offset, size)
        function.msix.notify(offset % 3)
    mapped = {(bar.address, bar.size) for bar in function.bars.values() if bar.address is not None}
    on_bus = {(base, end - base) for base, end, device in mmio.devices()}
    assert mapped == on_bus
    assert conf.read(placed.slot, 0, 4) == 0x1044_1AF4  # identity never changes

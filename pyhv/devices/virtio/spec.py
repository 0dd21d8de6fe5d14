"""Numbers from the virtio 1.2 specification shared by the transports and devices.

Feature bits are bit positions in the 64-bit feature word; the device-specific ones live
with their device. Status bits are those of the device status field (spec 2.1).
"""

from __future__ import annotations

# --- device status (spec 2.1) -------------------------------------------------------------
STATUS_ACKNOWLEDGE = 0x01
STATUS_DRIVER = 0x02
STATUS_DRIVER_OK = 0x04
STATUS_FEATURES_OK = 0x08
STATUS_DEVICE_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

# --- transport-independent feature bits (spec 6) --------------------------------------------
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_RING_PACKED = 34

# --- device IDs (spec 5) ----------------------------------------------------------------------
ID_NET = 1
ID_BLOCK = 2
ID_CONSOLE = 3
ID_ENTROPY = 4

# --- interrupt causes, as the MMIO InterruptStatus and the PCI ISR report them -----------------
INT_USED_BUFFER = 0x1
INT_CONFIG_CHANGE = 0x2


def bit(n: int) -> int:
    return 1 << n

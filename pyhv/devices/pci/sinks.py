"""Where an MSI goes: the accelerator's half of :class:`~pyhv.devices.pci.msix.MsiSink`.

Under KVM the in-kernel LAPIC takes the message through ``KVM_SIGNAL_MSI`` (one ioctl per
interrupt, no routing table to keep in step with the guest's vector table). Under the
software CPU the APIC bus decodes it (``pyhv.devices.apic_bus.ApicBus.deliver_msi``).
"""

from __future__ import annotations

import ctypes
import threading
from typing import List, Tuple

from ...kvm.ioctls import _iow
from ...kvm.syscall import ioctl


class kvm_msi(ctypes.Structure):
    _fields_ = [
        ("address_lo", ctypes.c_uint32),
        ("address_hi", ctypes.c_uint32),
        ("data", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("devid", ctypes.c_uint32),
        ("pad", ctypes.c_uint8 * 12),
    ]


KVM_SIGNAL_MSI = _iow(0xA5, kvm_msi)


class KvmMsiSink:
    """Injects MSIs into a VM with the in-kernel irqchip (``vm_fd`` is the VM's descriptor)."""

    def __init__(self, vm_fd: int) -> None:
        self.vm_fd = vm_fd
        self.sent = 0
        self.blocked = 0  # messages the guest's LAPIC did not accept (returned 0)

    def send_msi(self, address: int, data: int) -> None:
        msi = kvm_msi(address_lo=address & 0xFFFF_FFFF, address_hi=address >> 32, data=data & 0xFFFF_FFFF)
        delivered = ioctl(self.vm_fd, KVM_SIGNAL_MSI, msi, "KVM_SIGNAL_MSI")
        self.sent += 1
        if delivered == 0:
            self.blocked += 1


class ApicBusMsiSink:
    """Hands MSIs to the software CPU's APIC bus (anything with ``deliver_msi(address, data)``)."""

    def __init__(self, apic_bus) -> None:
        self.apic_bus = apic_bus

    def send_msi(self, address: int, data: int) -> None:
        self.apic_bus.deliver_msi(address, data)


class RecordingMsiSink:
    """Remembers every (address, data) message (for tests)."""

    def __init__(self) -> None:
        self.messages: List[Tuple[int, int]] = []
        self.event = threading.Event()

    def send_msi(self, address: int, data: int) -> None:
        self.messages.append((address, data))
        self.event.set()

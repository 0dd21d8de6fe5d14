"""A KVM virtual machine file descriptor: memory slots, irqchip, PIT, irqfd/ioeventfd."""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING, List, Sequence

from . import ioctls as ic
from . import structs as s
from .syscall import ioctl

if TYPE_CHECKING:
    from .system import Kvm
    from .vcpu import VcpuFd


class VmFd:
    def __init__(self, kvm: "Kvm", fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self._irq_level = s.kvm_irq_level()

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        region = s.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=guest_phys_addr,
                                               memory_size=memory_size, userspace_addr=userspace_addr)
        ioctl(self.fd, ic.KVM_SET_USER_MEMORY_REGION, region,
              f"KVM_SET_USER_MEMORY_REGION(slot {slot}, {guest_phys_addr:#x}+{memory_size:#x})")

    def set_tss_addr(self, addr: int) -> None:
        ioctl(self.fd, ic.KVM_SET_TSS_ADDR, addr, "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int) -> None:
        ioctl(self.fd, ic.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr), "KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self) -> None:
        ioctl(self.fd, ic.KVM_CREATE_IRQCHIP, None, "KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = 0) -> None:
        ioctl(self.fd, ic.KVM_CREATE_PIT2, s.kvm_pit_config(flags=flags), "KVM_CREATE_PIT2")

    def get_pit2(self) -> s.kvm_pit_state2:
        state = s.kvm_pit_state2()
        ioctl(self.fd, ic.KVM_GET_PIT2, state, "KVM_GET_PIT2")
        return state

    def get_irqchip(self, chip_id: int) -> s.kvm_irqchip:
        chip = s.kvm_irqchip(chip_id=chip_id)
        ioctl(self.fd, ic.KVM_GET_IRQCHIP, chip, "KVM_GET_IRQCHIP")
        return chip

    def set_irqchip(self, chip: s.kvm_irqchip) -> None:
        ioctl(self.fd, ic.KVM_SET_IRQCHIP, chip, "KVM_SET_IRQCHIP")

    def irq_line(self, gsi: int, level: bool) -> None:
        self._irq_level.irq = gsi
        self._irq_level.level = 1 if level else 0
        ioctl(self.fd, ic.KVM_IRQ_LINE, self._irq_level, "KVM_IRQ_LINE")

    def set_gsi_routing(self, entries: Sequence[s.kvm_irq_routing_entry]) -> None:
        table = s.routing_with_entries(len(entries))
        for i, entry in enumerate(entries):
            table.entries[i] = entry
        ioctl(self.fd, ic.KVM_SET_GSI_ROUTING, table, "KVM_SET_GSI_ROUTING")

    def irqfd(self, fd: int, gsi: int, deassign: bool = False, resample_fd: int = -1) -> None:
        flags = s.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        if resample_fd >= 0:
            flags |= s.KVM_IRQFD_FLAG_RESAMPLE
        arg = s.kvm_irqfd(fd=fd, gsi=gsi, flags=flags, resamplefd=max(resample_fd, 0))
        ioctl(self.fd, ic.KVM_IRQFD, arg, "KVM_IRQFD")

    def ioeventfd(self, fd: int, addr: int, length: int, pio: bool, datamatch: int = -1,
                  deassign: bool = False) -> None:
        flags = s.KVM_IOEVENTFD_FLAG_PIO if pio else 0
        if datamatch >= 0:
            flags |= s.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= s.KVM_IOEVENTFD_FLAG_DEASSIGN
        arg = s.kvm_ioeventfd(datamatch=max(datamatch, 0), addr=addr, len=length, fd=fd, flags=flags)
        ioctl(self.fd, ic.KVM_IOEVENTFD, arg, "KVM_IOEVENTFD")

    def get_clock(self) -> s.kvm_clock_data:
        data = s.kvm_clock_data()
        ioctl(self.fd, ic.KVM_GET_CLOCK, data, "KVM_GET_CLOCK")
        return data

    def create_vcpu(self, vcpu_id: int) -> "VcpuFd":
        from .vcpu import VcpuFd

        fd = ioctl(self.fd, ic.KVM_CREATE_VCPU, vcpu_id, f"KVM_CREATE_VCPU({vcpu_id})")
        return VcpuFd(self, fd, vcpu_id, self.kvm.vcpu_mmap_size())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def irqchip_route(gsi: int, chip: int, pin: int) -> s.kvm_irq_routing_entry:
    entry = s.kvm_irq_routing_entry(gsi=gsi, type=s.KVM_IRQ_ROUTING_IRQCHIP)
    entry.u.irqchip.irqchip = chip
    entry.u.irqchip.pin = pin
    return entry


def msi_route(gsi: int, address: int, data: int) -> s.kvm_irq_routing_entry:
    entry = s.kvm_irq_routing_entry(gsi=gsi, type=s.KVM_IRQ_ROUTING_MSI)
    entry.u.msi.address_lo = address & 0xFFFF_FFFF
    entry.u.msi.address_hi = address >> 32
    entry.u.msi.data = data
    return entry


__all__: List[str] = ["VmFd", "irqchip_route", "msi_route"]

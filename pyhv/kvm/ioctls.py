"""Every KVM ioctl number pyhv uses, in one table, computed from <linux/kvm.h>'s macros."""

from __future__ import annotations

import ctypes

from . import structs as s

KVMIO = 0xAE

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, ctype: type) -> int:
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(ctype))


def _ior(nr: int, ctype: type) -> int:
    return _ioc(_IOC_READ, nr, ctypes.sizeof(ctype))


def _iowr(nr: int, ctype: type) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(ctype))


# /dev/kvm (system) ioctls
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, s.kvm_msr_list)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, s.kvm_cpuid2)

# VM ioctls
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, s.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, s.kvm_irq_level)
KVM_GET_IRQCHIP = _iowr(0x62, s.kvm_irqchip)
KVM_SET_IRQCHIP = _ior(0x63, s.kvm_irqchip)
KVM_IRQ_LINE_STATUS = _iowr(0x67, s.kvm_irq_level)
KVM_SET_GSI_ROUTING = _iow(0x6A, s.kvm_irq_routing)
KVM_IRQFD = _iow(0x76, s.kvm_irqfd)
KVM_CREATE_PIT2 = _iow(0x77, s.kvm_pit_config)
KVM_IOEVENTFD = _iow(0x79, s.kvm_ioeventfd)
KVM_SET_CLOCK = _iow(0x7B, s.kvm_clock_data)
KVM_GET_CLOCK = _ior(0x7C, s.kvm_clock_data)
KVM_GET_PIT2 = _ior(0x9F, s.kvm_pit_state2)
KVM_SET_PIT2 = _iow(0xA0, s.kvm_pit_state2)

# vCPU ioctls
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, s.kvm_regs)
KVM_SET_REGS = _iow(0x82, s.kvm_regs)
KVM_GET_SREGS = _ior(0x83, s.kvm_sregs)
KVM_SET_SREGS = _iow(0x84, s.kvm_sregs)
KVM_TRANSLATE = _iowr(0x85, s.kvm_translation)
KVM_INTERRUPT = _iow(0x86, s.kvm_interrupt)
KVM_GET_MSRS = _iowr(0x88, s.kvm_msrs)
KVM_SET_MSRS = _iow(0x89, s.kvm_msrs)
KVM_GET_FPU = _ior(0x8C, s.kvm_fpu)
KVM_SET_FPU = _iow(0x8D, s.kvm_fpu)
KVM_GET_LAPIC = _ior(0x8E, s.kvm_lapic_state)
KVM_SET_LAPIC = _iow(0x8F, s.kvm_lapic_state)
KVM_SET_CPUID2 = _iow(0x90, s.kvm_cpuid2)
KVM_GET_CPUID2 = _iowr(0x91, s.kvm_cpuid2)
KVM_GET_MP_STATE = _ior(0x98, s.kvm_mp_state)
KVM_SET_MP_STATE = _iow(0x99, s.kvm_mp_state)
KVM_GET_VCPU_EVENTS = _ior(0x9F, s.kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _iow(0xA0, s.kvm_vcpu_events)

# KVM_CHECK_EXTENSION capabilities pyhv asks about
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT2 = 33
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_IOEVENTFD = 36
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_IMMEDIATE_EXIT = 136

KVM_API_VERSION = 12

"""The ctypes mirrors must match <linux/kvm.h>'s x86-64 sizes, or every ioctl number is wrong."""

import ctypes

import pytest

from pyhv.kvm import ioctls, structs

SIZES = {
    "kvm_userspace_memory_region": 32, "kvm_regs": 144, "kvm_segment": 24, "kvm_dtable": 16,
    "kvm_sregs": 312, "kvm_fpu": 416, "kvm_msr_entry": 16, "kvm_cpuid_entry2": 40,
    "kvm_lapic_state": 1024, "kvm_irq_level": 8, "kvm_irqchip": 520, "kvm_pit_config": 64,
    "kvm_pit_channel_state": 24, "kvm_pit_state2": 112, "kvm_clock_data": 48, "kvm_translation": 24,
    "kvm_vcpu_events": 64, "kvm_ioeventfd": 64, "kvm_irqfd": 32, "kvm_irq_routing_entry": 48,
    "kvm_run_header": 32,
}


@pytest.mark.parametrize("name,size", sorted(SIZES.items()))
def test_struct_size(name, size):
    assert ctypes.sizeof(getattr(structs, name)) == size


@pytest.mark.parametrize("name,value", [
    # Values as <linux/kvm.h> expands them on x86-64.
    ("KVM_CREATE_VM", 0xAE01), ("KVM_RUN", 0xAE80), ("KVM_SET_USER_MEMORY_REGION", 0x4020AE46),
    ("KVM_GET_REGS", 0x8090AE81), ("KVM_SET_SREGS", 0x4138AE84), ("KVM_SET_CPUID2", 0x4008AE90),
    ("KVM_GET_SUPPORTED_CPUID", 0xC008AE05), ("KVM_IRQ_LINE", 0x4008AE61), ("KVM_CREATE_PIT2", 0x4040AE77),
    ("KVM_IOEVENTFD", 0x4040AE79), ("KVM_IRQFD", 0x4020AE76), ("KVM_GET_VCPU_EVENTS", 0x8040AE9F),
])
def test_ioctl_numbers(name, value):
    assert getattr(ioctls, name) == value


def test_variable_length_buffers():
    buf = structs.cpuid_with_entries(3)
    assert buf.nent == 3
    assert ctypes.sizeof(buf) == 8 + 3 * 40
    msrs = structs.msrs_with_entries(2)
    assert ctypes.sizeof(msrs) == 8 + 2 * 16

"""MSI-X: the capability, table writes, per-vector and function masking, pending bits, and
delivery into a real KVM LAPIC."""

from __future__ import annotations

import ctypes
import struct

import pytest

from pyhv.devices.pci import config as cfg
from pyhv.devices.pci.config import PciError, PciFunction
from pyhv.devices.pci.host import PciHost
from pyhv.devices.pci.mock_driver import MockPciConfig
from pyhv.devices.pci.msix import (CAP_ID_MSIX, CONTROL_ENABLE, CONTROL_FUNCTION_MASK, MsixVectors)
from pyhv.devices.pci.root import PciRoot
from pyhv.devices.pci.sinks import KVM_SIGNAL_MSI, ApicBusMsiSink, KvmMsiSink, RecordingMsiSink, kvm_msi
from pyhv.kvm.system import kvm_available

TABLE = 0xE000_0000


def msix_function(machine, vectors=4):
    root = PciRoot(machine.pio, machine.mmio, machine.memory)
    PciHost(machine.pio, machine.mmio, root, with_ecam=False)
    function = PciFunction(0x1AF4, 0x1041, 0x02_00_00)
    msix = MsixVectors(vectors, machine.sink)
    msix.install(function, 1)
    slot = root.plug(function)
    conf = MockPciConfig(machine.pio)
    conf.write(slot, cfg.BAR0 + 4, 4, TABLE)
    conf.write(slot, cfg.COMMAND, 2, cfg.COMMAND_MEMORY)
    return msix, conf, slot


def program(mmio, vector, address, data, masked):
    entry = TABLE + 16 * vector
    mmio.write(entry, 4, address & 0xFFFF_FFFF)
    mmio.write(entry + 4, 4, address >> 32)
    mmio.write(entry + 8, 4, data)
    mmio.write(entry + 12, 4, int(masked))


def set_control(conf, slot, msix, value):
    conf.write(slot, msix.cap_offset + 2, 2, value)


def test_capability_describes_table_and_pba(machine):
    msix, conf, slot = msix_function(machine, vectors=5)
    assert (msix.cap_offset, CAP_ID_MSIX) in conf.capabilities(slot)
    control = conf.read(slot, msix.cap_offset + 2, 2)
    assert control & 0x7FF == 4  # table size minus one
    assert conf.read(slot, msix.cap_offset + 4, 4) == 0 | 1  # table at offset 0 of BAR 1
    assert conf.read(slot, msix.cap_offset + 8, 4) == 80 | 1  # PBA after 5 * 16 bytes
    assert conf.bar_size(slot, 1) == 0x1000
    # Table size is read-only; only enable and function mask are writable.
    set_control(conf, slot, msix, 0xFFFF)
    assert conf.read(slot, msix.cap_offset + 2, 2) == CONTROL_ENABLE | CONTROL_FUNCTION_MASK | 4


def test_vectors_start_masked_and_table_reads_back(machine):
    msix, conf, slot = msix_function(machine)
    assert machine.mmio.read(TABLE + 12, 4) == 1
    program(machine.mmio, 2, 0xFEE0_1000, 0x4041, masked=False)
    assert machine.mmio.read(TABLE + 32, 8) == 0xFEE0_1000
    assert machine.mmio.read(TABLE + 40, 4) == 0x4041
    machine.mmio.write(TABLE + 48, 8, 0x1234_5678_9ABC_DEF0)  # a qword write to vector 3
    assert machine.mmio.read(TABLE + 48, 4) == 0x9ABC_DEF0
    assert msix.message(3) == (0x1234_5678_9ABC_DEF0, 0)


def test_notify_delivers_only_when_enabled(machine):
    msix, conf, slot = msix_function(machine)
    program(machine.mmio, 0, 0xFEE0_0000, 0x30, masked=False)
    assert msix.notify(0) is False  # MSI-X off: the caller uses INTx
    set_control(conf, slot, msix, CONTROL_ENABLE)
    assert msix.notify(0) is True
    assert machine.sink.messages == [(0xFEE0_0000, 0x30)]
    assert msix.notify(9) is False  # no such vector


def test_masked_vector_sets_pending_bit_and_fires_on_unmask(machine):
    msix, conf, slot = msix_function(machine)
    set_control(conf, slot, msix, CONTROL_ENABLE)
    program(machine.mmio, 1, 0xFEE0_0000, 0x41, masked=True)
    pba = TABLE + msix.pba_offset
    assert msix.notify(1) is True
    assert machine.sink.messages == []
    assert machine.mmio.read(pba, 8) == 0b10
    machine.mmio.write(TABLE + 16 + 12, 4, 0)  # unmask vector 1
    assert machine.sink.messages == [(0xFEE0_0000, 0x41)]
    assert machine.mmio.read(pba, 8) == 0


def test_function_mask_holds_every_vector(machine):
    msix, conf, slot = msix_function(machine)
    program(machine.mmio, 0, 0xFEE0_0000, 0x50, masked=False)
    program(machine.mmio, 3, 0xFEE0_0000, 0x53, masked=False)
    set_control(conf, slot, msix, CONTROL_ENABLE | CONTROL_FUNCTION_MASK)
    msix.notify(3)
    msix.notify(0)
    assert machine.sink.messages == []
    assert machine.mmio.read(TABLE + msix.pba_offset, 4) == 0b1001
    set_control(conf, slot, msix, CONTROL_ENABLE)
    assert sorted(machine.sink.messages) == [(0xFEE0_0000, 0x50), (0xFEE0_0000, 0x53)]


def test_out_of_range_and_odd_table_accesses(machine):
    msix, conf, slot = msix_function(machine, vectors=2)
    before = bytes(msix.table)
    machine.mmio.write(TABLE + 2 * 16, 4, 0xDEAD)  # just past the table
    machine.mmio.write(TABLE + 0xFFC, 4, 0xDEAD)  # the end of the BAR
    machine.mmio.write(TABLE + 2, 4, 0xDEAD)  # misaligned dword
    machine.mmio.write(TABLE, 2, 0xBEEF)  # a word: undefined, dropped
    machine.mmio.write(TABLE + msix.pba_offset, 8, 0xFF)  # the PBA is read-only
    assert bytes(msix.table) == before
    assert machine.mmio.read(TABLE + 0xFFC, 4) == 0
    assert machine.mmio.read(TABLE + 1, 1) == 0
    assert machine.mmio.read(TABLE + msix.pba_offset, 8) == 0


@pytest.mark.parametrize("count", [0, 2049])
def test_vector_count_limits(count):
    with pytest.raises(PciError, match=f"MSI-X vector count {count}"):
        MsixVectors(count, RecordingMsiSink())


def test_apic_bus_sink_forwards():
    class Bus:
        def __init__(self):
            self.calls = []

        def deliver_msi(self, address, data):
            self.calls.append((address, data))

    bus = Bus()
    ApicBusMsiSink(bus).send_msi(0xFEE0_0000, 0x33)
    assert bus.calls == [(0xFEE0_0000, 0x33)]


def test_signal_msi_ioctl_number():
    assert ctypes.sizeof(kvm_msi) == 32
    assert KVM_SIGNAL_MSI == 0x4020_AEA5  # _IOW(KVMIO, 0xa5, struct kvm_msi)


@pytest.mark.skipif(kvm_available() is not None, reason=f"needs /dev/kvm: {kvm_available()}")
def test_kvm_sink_sets_the_vector_in_the_lapic_irr():
    from pyhv.kvm.system import Kvm

    kvm = Kvm("/dev/kvm")
    vm = kvm.create_vm()
    try:
        vm.create_irqchip()
        vcpu = vm.create_vcpu(0)
        state = vcpu.get_lapic()
        regs = bytearray(ctypes.string_at(ctypes.addressof(state), 1024))
        struct.pack_into("<I", regs, 0xF0, 0x1FF)  # spurious-vector register: APIC enabled
        ctypes.memmove(ctypes.addressof(state), bytes(regs), 1024)
        vcpu.set_lapic(state)
        sink = KvmMsiSink(vm.fd)
        sink.send_msi(0xFEE0_0000, 0x31)  # fixed delivery, vector 0x31, to APIC ID 0
        after = vcpu.get_lapic()
        irr = ctypes.string_at(ctypes.addressof(after), 1024)
        assert struct.unpack_from("<I", irr, 0x210)[0] & (1 << (0x31 - 32))
        assert (sink.sent, sink.blocked) == (1, 0)
        vcpu.close()
    finally:
        vm.close()
        kvm.close()

"""The host bridge through configuration mechanism #1 (0xCF8/0xCFC) and through ECAM."""

from __future__ import annotations

from pyhv.devices.pci import config as cfg
from pyhv.devices.pci.host import (CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, ECAM_BASE, I440FX_DEVICE_ID,
                                   I440FX_VENDOR_ID, PciHost)
from pyhv.devices.pci.mock_driver import MockPciConfig
from pyhv.devices.pci.root import PciRoot


def make_host(machine, **kwargs):
    root = PciRoot(machine.pio, machine.mmio, machine.memory)
    return PciHost(machine.pio, machine.mmio, root, **kwargs)


def test_host_bridge_ids_through_config_ports(machine):
    make_host(machine)
    conf = MockPciConfig(machine.pio)
    assert conf.read(0, cfg.VENDOR_ID, 2) == I440FX_VENDOR_ID == 0x8086
    assert conf.read(0, cfg.DEVICE_ID, 2) == I440FX_DEVICE_ID == 0x1237
    assert conf.read(0, 0, 4) == 0x1237_8086
    # Class code 06/00/00 (host bridge) at 0x09-0x0B, read a byte at a time through 0xCFD-0xCFF.
    assert [conf.read(0, 0x09 + i, 1) for i in range(3)] == [0x00, 0x00, 0x06]
    assert conf.read(0, cfg.HEADER_TYPE, 1) == 0


def test_config_address_latches_dwords_only(machine):
    make_host(machine)
    pio = machine.pio
    pio.write(CONFIG_ADDRESS_PORT, 4, 0x8000_0003)
    assert pio.read(CONFIG_ADDRESS_PORT, 4) == 0x8000_0000  # bits 1:0 read as zero
    pio.write(CONFIG_ADDRESS_PORT, 1, 0x00)  # a byte write is not for CONFIG_ADDRESS
    assert pio.read(CONFIG_ADDRESS_PORT, 4) == 0x8000_0000
    assert pio.read(CONFIG_ADDRESS_PORT, 2) == 0xFFFF


def test_byte_at_0xcf9_reaches_the_reset_register(machine):
    class Register:
        value = 0

        def read(self, offset, size):
            return self.value

        def write(self, offset, size, value):
            self.value = value

    reset = Register()
    machine.pio.attach(0xCF9, 1, reset)
    make_host(machine)
    machine.pio.write(0xCF9, 1, 0x02)
    assert reset.value == 0x02
    machine.pio.write(CONFIG_ADDRESS_PORT, 4, 0x8000_0000)
    assert machine.pio.read(CONFIG_DATA_PORT, 2) == 0x8086


def test_disabled_address_and_empty_slots_read_all_ones(machine):
    make_host(machine)
    pio = machine.pio
    pio.write(CONFIG_ADDRESS_PORT, 4, 0x0000_0000)  # enable bit clear
    assert pio.read(CONFIG_DATA_PORT, 4) == 0xFFFF_FFFF
    conf = MockPciConfig(machine.pio)
    assert conf.read(5, 0, 4) == 0xFFFF_FFFF  # nobody in slot 5
    assert conf.read(0, 0, 2, function=3) == 0xFFFF  # no function 3
    assert conf.read(0, 0, 4, bus=1) == 0xFFFF_FFFF  # no bus 1
    conf.write(5, cfg.COMMAND, 2, 0x7)  # dropped, not an error


def test_access_past_the_data_window_reads_all_ones(machine):
    make_host(machine)
    machine.pio.write(CONFIG_ADDRESS_PORT, 4, 0x8000_0000)
    assert machine.pio.read(CONFIG_DATA_PORT + 2, 4) == 0xFFFF_FFFF  # would run past 0xCFF


def test_ecam_window_reaches_the_same_config_space(machine):
    host = make_host(machine)
    assert machine.mmio.read(ECAM_BASE, 4) == 0x1237_8086
    machine.mmio.write(ECAM_BASE + cfg.LATENCY_TIMER, 1, 0x40)
    assert MockPciConfig(machine.pio).read(0, cfg.LATENCY_TIMER, 1) == 0x40
    assert host.bridge.config[cfg.LATENCY_TIMER] == 0x40
    # Slot 3, function 0 is empty; the extended space past 256 bytes reads zero.
    assert machine.mmio.read(ECAM_BASE + (3 << 15), 4) == 0xFFFF_FFFF
    assert machine.mmio.read(ECAM_BASE + 0x100, 4) == 0


def test_ecam_can_be_left_out(machine):
    make_host(machine, with_ecam=False)
    assert machine.mmio.devices() == []

"""PciBuilder: QEMU's -netdev and -device virtio-*-pci names turned into plugged devices."""

from __future__ import annotations

import socket
import struct

import pytest

from pyhv.devices.pci.builder import PciBuilder
from pyhv.devices.pci.mock_driver import MockPciConfig, MockVirtioPciDriver
from pyhv.devices.virtio.blk import VirtioBlock
from pyhv.devices.virtio.drives import parse_drive
from pyhv.devices.virtio.mock_driver import Buffer
from pyhv.devices.virtio.net import VirtioNet
from pyhv.errors import ConfigError


@pytest.fixture
def builder(machine):
    b = PciBuilder(machine.pio, machine.mmio, machine.memory, machine.irq_line, machine.sink)
    yield b
    b.close()


@pytest.fixture
def unix_listener(tmp_path):
    path = str(tmp_path / "passt.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    yield path, listener
    listener.close()


def test_net_rng_and_blk_devices_in_order(machine, builder, unix_listener, tmp_path):
    path, listener = unix_listener
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(1 << 20))
    drive = parse_drive(f"file={image},format=raw,if=none,id=d0", 0)
    builder.drives = {"d0": drive}
    builder.add_netdev(f"stream,id=n0,addr.type=unix,addr.path={path}")
    net = builder.add_device("virtio-net-pci", {"netdev": "n0", "mac": "52:54:00:00:00:07"})
    rng = builder.add_device("virtio-rng-pci", {"addr": "0x6"})
    blk = builder.add_device("virtio-blk-pci", {"drive": "d0", "serial": "abc"})
    assert [p.slot for p in builder.slots] == [1, 6, 2]
    assert [p.gsi for p in builder.slots] == [21, 22, 22]  # swizzled INTA#
    assert isinstance(net.function.device, VirtioNet) and net.function.device.mac == bytes.fromhex("525400000007")
    assert isinstance(blk.function.device, VirtioBlock)
    conf = MockPciConfig(machine.pio)
    assert [conf.read(s, 2, 2) for s in (1, 2, 6)] == [0x1041, 0x1042, 0x1044]
    # Every BAR is decoded in the PCI window, none overlapping (the bus refuses overlaps).
    bars = [bar for p in builder.slots for bar in p.function.bars.values()]
    assert all(bar.address is not None and 0xE100_0000 <= bar.address < 0xFEC0_0000 for bar in bars)
    assert rng.function.msix.vector_count == 2


def test_net_device_runs_end_to_end(machine, builder, unix_listener):
    path, listener = unix_listener
    builder.add_netdev(f"stream,id=n0,addr.type=unix,addr.path={path}")
    placed = builder.add_device("virtio-net-pci", {"netdev": "n0"})
    peer, _ = listener.accept()
    builder.start()
    driver = MockVirtioPciDriver(machine.pio, machine.mmio, machine.memory, placed.slot)
    driver.start(2)
    frame = bytes.fromhex("ffffffffffff525400123456") + bytes(50)
    buf = driver.alloc(12 + len(frame))
    machine.memory.write(buf + 12, frame)
    driver.submit(1, [Buffer(buf, 12 + len(frame), False)])
    assert peer.recv(4 + len(frame)) == struct.pack(">I", len(frame)) + frame
    assert placed.function.device.mac == bytes.fromhex("525400123456")  # QEMU's default
    peer.close()


@pytest.mark.parametrize("driver,props,message", [
    ("e1000", {}, "-device e1000: not a PCI device pyhv provides"),
    ("virtio-net-pci", {}, "netdev=ID is missing"),
    ("virtio-net-pci", {"netdev": "nope"}, "no -netdev with id 'nope'"),
    ("virtio-blk-pci", {}, "drive=ID is missing"),
    ("virtio-blk-pci", {"drive": "d9"}, "no -drive or -blockdev with id 'd9'"),
    ("virtio-rng-pci", {"colour": "red"}, "unsupported property 'colour'"),
    ("virtio-rng-pci", {"addr": "0"}, "slot 0 is the host bridge"),
    ("virtio-rng-pci", {"addr": "3.1"}, "only function 0"),
    ("virtio-rng-pci", {"addr": "x"}, "'x' is not a number"),
    ("virtio-rng-pci", {"addr": "40"}, "slot 40 does not exist"),
])
def test_bad_device_options(builder, driver, props, message):
    with pytest.raises(ConfigError, match=message):
        builder.add_device(driver, props)


def test_netdev_used_twice_and_duplicate_ids(builder, unix_listener):
    path, _ = unix_listener
    builder.add_netdev(f"stream,id=n0,addr.type=unix,addr.path={path}")
    with pytest.raises(ConfigError, match="id 'n0' is already used"):
        builder.add_netdev(f"stream,id=n0,addr.type=unix,addr.path={path}")
    builder.add_device("virtio-net-pci", {"netdev": "n0"})
    with pytest.raises(ConfigError, match="netdev 'n0' is already used by virtio-net-pci"):
        builder.add_device("virtio-net-pci", {"netdev": "n0"})


def test_slot_taken_twice(builder):
    builder.add_device("virtio-rng-pci", {"addr": "5"})
    with pytest.raises(ConfigError, match="slot 5 is already taken"):
        builder.add_device("virtio-rng-pci", {"addr": "5"})


@pytest.mark.parametrize("value, offered", [("on", True), ("yes", True), ("true", True),
                                            ("off", False), ("no", False), ("false", False), (None, False)])
def test_packed_property(builder, unix_listener, tmp_path, value, offered):
    """QEMU's packed=on offers VIRTIO_F_RING_PACKED (bit 34); off, the default, does not."""
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(1 << 16))
    builder.drives = {"d0": parse_drive(f"file={image},format=raw,if=none,id=d0", 0)}
    builder.add_netdev(f"stream,id=n0,addr.type=unix,addr.path={unix_listener[0]}")
    extra = {} if value is None else {"packed": value}
    for driver, props in (("virtio-blk-pci", {"drive": "d0"}), ("virtio-net-pci", {"netdev": "n0"}),
                          ("virtio-rng-pci", {})):
        device = builder.add_device(driver, {**props, **extra}).function.device
        assert bool(device.avail_features >> 34 & 1) is offered, driver


@pytest.mark.parametrize("driver", ["virtio-blk-pci", "virtio-net-pci", "virtio-rng-pci"])
def test_packed_property_refuses_other_values(builder, driver):
    with pytest.raises(ConfigError, match=f"-device {driver}: packed expects on or off, got 'maybe'"):
        builder.add_device(driver, {"drive": "d0", "netdev": "n0", "packed": "maybe"})


def test_a_nic_option_plugs_a_card_on_its_back_end(machine, builder, unix_listener):
    from pyhv.qemu_args import parse_run_args

    path, _listener = unix_listener
    cfg = parse_run_args(["-kernel", "k", "-nic", f"stream,addr.type=unix,addr.path={path},mac=52:54:00:00:00:09"])
    for text in cfg.netdevs:
        builder.add_netdev(text)
    for spec in cfg.devices:
        placed = builder.add_device(spec.driver, spec.props)
    card = placed.function.device
    assert isinstance(card, VirtioNet) and card.mac == bytes.fromhex("525400000009")
    assert card.backend.name == "stream"

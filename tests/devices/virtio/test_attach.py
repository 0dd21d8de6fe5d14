"""Building virtio-mmio devices from QEMU options onto a machine's MMIO bus."""

from __future__ import annotations

import pytest

from pyhv.bus import Bus
from pyhv.chardev import BufferBackend
from pyhv.devices.virtio import attach, spec
from pyhv.devices.virtio.attach import VirtioMmioBuilder
from pyhv.devices.virtio.mock_driver import Buffer, MockMmioDriver
from pyhv.errors import ConfigError
from pyhv.irq import RecordingIrqLine


class Lines:
    def __init__(self):
        self.lines = {}

    def __call__(self, gsi):
        return self.lines.setdefault(gsi, RecordingIrqLine())


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\x5a" * 8192)
    return path


@pytest.fixture
def builder(memory):
    made = VirtioMmioBuilder(Bus("mmio"), memory, Lines(), {"con0": BufferBackend()})
    yield made
    made.close()


def test_slots_layout_and_bus_reads(builder, image):
    first = builder.add_drive(f"file={image},if=virtio,format=raw")
    second = builder.add_device("virtio-rng-device", {})
    assert (first.base, first.size, first.gsi) == (attach.MMIO_BASE, 0x200, 16)
    assert (second.base, second.gsi) == (attach.MMIO_BASE + 0x200, 17)
    assert builder.mmio.read(first.base, 4) == int.from_bytes(b"virt", "little")
    assert builder.mmio.read(first.base + 8, 4) == spec.ID_BLOCK
    assert builder.mmio.read(second.base + 8, 4) == spec.ID_ENTROPY
    assert builder.mmio.read(first.base + 0x100, 8) == 8192 // 512
    assert builder.kernel_cmdline() == (
        "virtio_mmio.device=0x200@0xd0000000:16 virtio_mmio.device=0x200@0xd0000200:17")


def test_blk_device_by_drive_id_read_only(builder, image):
    builder.add_drive(f"file={image},if=none,id=d0,format=raw,readonly=on")
    slot = builder.add_device("virtio-blk-device", {"drive": "d0", "serial": "abc"})
    device = slot.transport.device
    assert device.backend.read_only and device.serial == b"abc"


def test_blk_device_by_blockdev(builder, image):
    builder.add_blockdev(f"driver=file,node-name=f0,filename={image}")
    slot = builder.add_device("virtio-blk-device", {"drive": "f0"})
    assert slot.transport.device.backend.size == 8192


def test_writable_probed_raw_is_refused(builder, image):
    with pytest.raises(ConfigError, match="probed as raw"):
        builder.add_drive(f"file={image},if=virtio")


def test_missing_image_names_the_drive(builder, tmp_path):
    with pytest.raises(ConfigError, match="drive 'drive0'.*No such file"):
        builder.add_drive(f"file={tmp_path}/nope.img,if=virtio,format=raw")


@pytest.mark.parametrize("driver,props,message", [
    ("virtio-blk-device", {}, "drive=ID is missing"),
    ("virtio-blk-device", {"drive": "zz"}, "no -drive or -blockdev with id 'zz'"),
    ("virtio-blk-device", {"drive": "d0", "serial": "x" * 21}, "longer than 20 bytes"),
    ("virtio-blk-device", {"drive": "d0", "bootindex": "1"}, "unsupported property 'bootindex'"),
    ("virtio-rng-device", {"rng": "rng0"}, "unsupported property 'rng'"),
    ("virtio-net-device", {}, "not a virtio-mmio device"),
    ("virtconsole", {"chardev": "con0"}, "needs a virtio-serial-device"),
])
def test_bad_devices(builder, image, driver, props, message):
    builder.add_drive(f"file={image},if=none,id=d0,format=raw")
    with pytest.raises(ConfigError, match=message):
        builder.add_device(driver, props)


def test_drive_used_twice(builder, image):
    builder.add_drive(f"file={image},if=none,id=d0,format=raw")
    builder.add_device("virtio-blk-device", {"drive": "d0"})
    with pytest.raises(ConfigError, match="already used"):
        builder.add_device("virtio-blk-device", {"drive": "d0"})


def test_duplicate_drive_id(builder, image):
    builder.add_drive(f"file={image},if=none,id=d0,format=raw")
    with pytest.raises(ConfigError, match="id 'd0' is already used"):
        builder.add_drive(f"file={image},if=none,id=d0,format=raw")


def test_too_many_devices(builder):
    for _ in attach.GSIS:
        builder.add_device("virtio-rng-device", {})
    with pytest.raises(ConfigError, match="at most 8"):
        builder.add_device("virtio-rng-device", {})


def test_virtconsole_binds_chardev(builder, memory):
    slot = builder.add_device("virtio-serial-device", {})
    assert builder.add_device("virtconsole", {"chardev": "con0"}) is None
    with pytest.raises(ConfigError, match="chardev 'con9'"):
        builder.add_device("virtio-serial-device", {})
        builder.add_device("virtconsole", {"chardev": "con9"})
    driver = MockMmioDriver(slot.transport, memory)
    driver.start(2)
    text = driver.alloc(3)
    memory.write(text, b"hi\n")
    driver.submit(1, [Buffer(text, 3, False)])
    assert builder.chardevs["con0"].output == b"hi\n"
    assert builder.irq_line(slot.gsi).level


@pytest.mark.parametrize("value, offered", [("on", True), ("true", True), ("yes", True),
                                            ("off", False), ("no", False), ("false", False), (None, False)])
def test_packed_property(builder, image, value, offered):
    """QEMU's packed=on offers VIRTIO_F_RING_PACKED (bit 34); off, the default, does not."""
    builder.add_drive(f"file={image},if=none,id=d0,format=raw")
    extra = {} if value is None else {"packed": value}
    for driver, props in (("virtio-blk-device", {"drive": "d0"}), ("virtio-rng-device", {}),
                          ("virtio-serial-device", {})):
        device = builder.add_device(driver, {**props, **extra}).transport.device
        assert bool(device.avail_features >> spec.F_RING_PACKED & 1) is offered, driver


@pytest.mark.parametrize("driver", ["virtio-blk-device", "virtio-rng-device", "virtio-serial-device"])
def test_packed_property_refuses_other_values(builder, image, driver):
    builder.add_drive(f"file={image},if=none,id=d0,format=raw")
    with pytest.raises(ConfigError, match=f"-device {driver}: packed expects on or off, got 'maybe'"):
        builder.add_device(driver, {"drive": "d0", "packed": "maybe"})


def test_a_packed_disk_from_options_reads_and_writes(builder, image, memory):
    builder.add_drive(f"file={image},if=none,id=d0,format=raw")
    slot = builder.add_device("virtio-blk-device", {"drive": "d0", "packed": "on"})
    driver = MockMmioDriver(slot.transport, memory)
    assert driver.start(1) >> spec.F_RING_PACKED & 1
    header, data, status = driver.alloc(16), driver.alloc(512), driver.alloc(1, 0xFF)
    memory.write(header, (1).to_bytes(4, "little") + bytes(4) + (3).to_bytes(8, "little"))  # T_OUT, sector 3
    memory.write(data, b"\xa5" * 512)
    driver.submit(0, [Buffer(header, 16, False), Buffer(data, 512, False), Buffer(status, 1, True)])
    assert memory.read_u8(status) == 0
    assert image.read_bytes()[3 * 512:4 * 512] == b"\xa5" * 512

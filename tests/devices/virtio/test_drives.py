"""-drive and -blockdev parsing: good spellings and every refusal."""

from __future__ import annotations

import pytest

from pyhv.devices.virtio.drives import DriveSpec, parse_blockdev, parse_drive
from pyhv.errors import ConfigError


def test_drive_virtio():
    assert parse_drive("file=/tmp/a.img,if=virtio,format=raw", 0) == DriveSpec(
        "drive0", "/tmp/a.img", "raw", False, "virtio", True)


def test_drive_none_with_id_readonly_and_comma_in_path():
    drive = parse_drive("file=/tmp/a,,b.qcow2,if=none,id=disk1,format=qcow2,readonly=on,discard=ignore", 3)
    assert drive == DriveSpec("disk1", "/tmp/a,b.qcow2", "qcow2", True, "none", False)


def test_drive_format_left_to_probe():
    assert parse_drive("file=x,if=virtio", 1).format is None


@pytest.mark.parametrize("text,message", [
    ("if=virtio", "file=PATH is missing"),
    ("file=x", "give if=virtio or if=none"),
    ("file=x,if=ide", "if=ide is not supported"),
    ("file=x,if=virtio,format=vmdk", "unknown format 'vmdk'"),
    ("file=x,if=virtio,readonly=maybe", "readonly expects on or off"),
    ("file=x,if=virtio,media=cdrom", "media=cdrom"),
    ("file=x,if=virtio,cache=none", "cache=none is not supported"),
    ("file=x,if=virtio,discard=sometimes", "discard=sometimes"),
    ("file=x,if=virtio,index=2", "unsupported option 'index'"),
    ("file=x,if=virtio,snapshot", "'snapshot' needs a value"),
    ("file=x,file=y,if=virtio", "'file' given twice"),
])
def test_bad_drives(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_drive(text, 0)


def test_blockdev_file_then_format_node():
    nodes = {}
    nodes["f"] = parse_blockdev("driver=file,node-name=f,filename=/img/a.qcow2", nodes)
    assert nodes["f"] == DriveSpec("f", "/img/a.qcow2", "raw", False, "none", True)
    top = parse_blockdev("driver=qcow2,node-name=q,file=f,read-only=on", nodes)
    assert top == DriveSpec("q", "/img/a.qcow2", "qcow2", True, "none", True)


def test_blockdev_inline_file_child():
    drive = parse_blockdev("driver=raw,node-name=r,file.driver=file,file.filename=/img/r.raw", {})
    assert (drive.path, drive.format) == ("/img/r.raw", "raw")


@pytest.mark.parametrize("text,message", [
    ("driver=file,filename=x", "node-name is missing"),
    ("driver=nbd,node-name=n", "driver 'nbd' is not supported"),
    ("driver=raw,node-name=n,file=missing", "file=missing names no earlier"),
    ("driver=raw,node-name=n,file.driver=host_device,file.filename=/dev/sda", "file.driver=host_device"),
    ("driver=file,node-name=n", "no file name"),
    ("driver=file,node-name=n,filename=x,aio=native", "unsupported option 'aio'"),
    ("driver=file,node-name=n,filename=x,read-only=2", "read-only expects on or off"),
])
def test_bad_blockdevs(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_blockdev(text, {})


def test_blockdev_node_name_reused():
    nodes = {"a": parse_blockdev("driver=file,node-name=a,filename=x", {})}
    with pytest.raises(ConfigError, match="already used"):
        parse_blockdev("driver=file,node-name=a,filename=y", nodes)

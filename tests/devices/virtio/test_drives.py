"""-drive and -blockdev parsing: good spellings and every refusal."""

from __future__ import annotations

import os

import pytest

from pyhv.block.overlay import remove_overlays
from pyhv.devices.virtio.drives import DriveOpener, DriveSpec, parse_blockdev, parse_drive
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


def test_drive_snapshot_from_the_option_or_from_qemus_dash_snapshot():
    assert not parse_drive("file=x,if=virtio", 0).snapshot
    assert parse_drive("file=x,if=virtio,snapshot=on", 0).snapshot
    assert parse_drive("file=x,if=virtio", 0, snapshot=True).snapshot  # -snapshot
    assert not parse_drive("file=x,if=virtio,snapshot=off", 0, snapshot=True).snapshot  # the drive's own wins
    with pytest.raises(ConfigError, match="snapshot expects on or off"):
        parse_drive("file=x,if=virtio,snapshot=sometimes", 0)


@pytest.fixture
def image(tmp_path, monkeypatch):
    """A raw image of 8 sectors of known bytes, and TMPDIR pointing at an empty directory."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(range(256)) * 16)
    return path, scratch


def _snapshot_drive(path) -> DriveSpec:
    return parse_drive(f"file={path},if=virtio,format=raw,snapshot=on", 0)


def test_a_snapshot_drive_writes_to_an_overlay_and_leaves_the_image_alone(image):
    path, scratch = image
    before = path.read_bytes()
    with DriveOpener().open(_snapshot_drive(path)) as disk:
        assert list(scratch.iterdir()) == []  # deleted as soon as it was open
        assert disk.read(0, 512) == before[:512]  # reads through to the image
        disk.write(512, b"\xee" * 512)
        disk.flush()
        assert disk.read(0, 1024) == before[:512] + b"\xee" * 512
    assert path.read_bytes() == before


def test_a_kept_overlay_survives_a_reset_and_is_deleted_by_its_owner(image):
    path, scratch = image
    kept = {}
    with DriveOpener(kept).open(_snapshot_drive(path)) as disk:
        disk.write(0, b"\x11" * 512)
    with DriveOpener(kept).open(_snapshot_drive(path)) as disk:  # the machine built after a reset
        assert disk.read(0, 512) == b"\x11" * 512
    assert [p.name for p in scratch.iterdir()] == [os.path.basename(next(iter(kept.values())))]
    remove_overlays(kept.values())
    assert list(scratch.iterdir()) == []
    assert path.read_bytes()[:512] == bytes(range(256)) * 2


def test_a_read_only_snapshot_drive_needs_no_overlay(image):
    path, scratch = image
    drive = parse_drive(f"file={path},if=virtio,format=raw,snapshot=on,readonly=on", 0)
    with DriveOpener({}).open(drive) as disk:
        assert disk.read_only and list(scratch.iterdir()) == []


def test_no_place_for_the_overlay_is_one_clear_error(image, monkeypatch, tmp_path):
    path, _ = image
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"drive 'drive0': cannot create a temporary overlay in .*missing: "
                                          r"No such file or directory \(set TMPDIR"):
        DriveOpener().open(_snapshot_drive(path))
    assert path.read_bytes() == bytes(range(256)) * 16


def test_a_snapshot_of_a_missing_image_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with pytest.raises(ConfigError, match="could not open .*nothing.raw.*No such file"):
        DriveOpener().open(_snapshot_drive(tmp_path / "nothing.raw"))
    assert list(tmp_path.iterdir()) == []

"""QEMU's ``-drive`` and ``-blockdev`` options, parsed into plain values, and the images they
name opened (:class:`DriveOpener`).

Supported spellings (anything else is a ConfigError naming the option)::

    -drive file=PATH,if=virtio|none[,format=raw|qcow2][,readonly=on|off][,id=ID]
           [,media=disk][,cache=writeback][,discard=unmap|ignore][,snapshot=on|off]
    -blockdev driver=file,node-name=N,filename=PATH[,read-only=on|off]
    -blockdev driver=raw|qcow2,node-name=N,file.driver=file,file.filename=PATH[,read-only=on|off]
    -blockdev driver=raw|qcow2,node-name=N,file=NODE[,read-only=on|off]

``if=`` has no default here: QEMU's default is IDE, which pyhv does not emulate.
"""

from __future__ import annotations

import os
from typing import Dict, NamedTuple, Optional

from ...block.backend import BlockBackend, open_image
from ...block.errors import BlockError
from ...block.overlay import create_temporary_overlay, remove_overlays
from ...chardev import parse_on_off, split_options
from ...errors import ConfigError

FORMATS = ("raw", "qcow2")
INTERFACES = ("virtio", "none")


class DriveSpec(NamedTuple):
    """One disk image a virtio-blk device can be given."""

    id: str
    path: str
    format: Optional[str]  # None: probe (a writable raw image must be named)
    read_only: bool
    interface: str  # "virtio": a device is created for it; "none": a -device names it
    discard: bool = True  # False: discard=ignore, the device does not offer DISCARD
    snapshot: bool = False  # writes go to a temporary overlay: the image stays as it was


def _key_values(option: str, text: str) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for part in split_options(text):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"{option} {text}: '{part}' needs a value (key=value)")
        if key in values:
            raise ConfigError(f"{option} {text}: '{key}' given twice")
        values[key] = value
    return values


def pop_on_off(option: str, props: Dict[str, str], key: str, default: bool = False) -> bool:
    """An on/off property (QEMU's spellings: on/off, yes/no, true/false) taken out of
    ``props``, the device's properties, so that what is left over can be refused."""
    value = props.pop(key, None)
    return default if value is None else parse_on_off(option, key, value)


def _format(option: str, value: Optional[str]) -> Optional[str]:
    if value is not None and value not in FORMATS:
        raise ConfigError(f"{option}: unknown format '{value}' (known: {', '.join(FORMATS)})")
    return value


def parse_drive(text: str, index: int, snapshot: bool = False) -> DriveSpec:
    """``-drive`` number ``index`` (its id when it names none, as QEMU's ``drive0``...);
    ``snapshot``: QEMU's ``-snapshot``, the default of its ``snapshot=``."""
    values = _key_values("-drive", text)
    path = values.pop("file", "")
    if not path:
        raise ConfigError(f"-drive {text}: file=PATH is missing")
    interface = values.pop("if", None)
    if interface is None:
        raise ConfigError(f"-drive {text}: give if=virtio or if=none (QEMU's default, IDE, is not emulated)")
    if interface not in INTERFACES:
        raise ConfigError(f"-drive {text}: if={interface} is not supported (use if=virtio or if=none)")
    drive_id = values.pop("id", f"drive{index}")
    fmt = _format(f"-drive {text}", values.pop("format", None))
    read_only = parse_on_off(f"-drive {text}", "readonly", values.pop("readonly", "off"))
    media = values.pop("media", "disk")
    if media != "disk":
        raise ConfigError(f"-drive {text}: media={media} is not supported (only disk)")
    cache = values.pop("cache", "writeback")
    if cache != "writeback":
        # Writes go through the host page cache and FLUSH is fdatasync: that is writeback.
        raise ConfigError(f"-drive {text}: cache={cache} is not supported (pyhv's cache mode is writeback)")
    discard = values.pop("discard", "unmap")
    if discard not in ("unmap", "on", "ignore", "off"):
        raise ConfigError(f"-drive {text}: discard={discard}: use unmap or ignore")
    snapshot = parse_on_off(f"-drive {text}", "snapshot", values.pop("snapshot", "on" if snapshot else "off"))
    if values:
        raise ConfigError(f"-drive {text}: unsupported option '{next(iter(values))}'")
    return DriveSpec(drive_id, path, fmt, read_only, interface, discard in ("unmap", "on"), snapshot)


def parse_blockdev(text: str, nodes: Dict[str, DriveSpec]) -> DriveSpec:
    """``-blockdev``; ``nodes`` holds the earlier ones, which ``file=NODE`` may name."""
    option = f"-blockdev {text}"
    values = _key_values("-blockdev", text)
    driver = values.pop("driver", "")
    node = values.pop("node-name", "")
    if not node:
        raise ConfigError(f"{option}: node-name is missing")
    if node in nodes:
        raise ConfigError(f"{option}: node-name '{node}' is already used")
    read_only = parse_on_off(option, "read-only", values.pop("read-only", "off"))
    discard = values.pop("discard", "unmap")
    if discard not in ("unmap", "on", "ignore", "off"):
        raise ConfigError(f"{option}: discard={discard}: use unmap or ignore")
    if driver == "file":
        path = values.pop("filename", "")
        fmt: Optional[str] = "raw"
    elif driver in FORMATS:
        fmt = driver
        child = values.pop("file", None)
        if child is not None:
            if child not in nodes:
                raise ConfigError(f"{option}: file={child} names no earlier -blockdev node")
            path = nodes[child].path
        else:
            child_driver = values.pop("file.driver", "file")
            if child_driver != "file":
                raise ConfigError(f"{option}: file.driver={child_driver} is not supported (only file)")
            path = values.pop("file.filename", "")
    else:
        raise ConfigError(f"{option}: driver '{driver}' is not supported (file, raw, qcow2)")
    if not path:
        raise ConfigError(f"{option}: no file name (filename=, file.filename= or file=NODE)")
    if values:
        raise ConfigError(f"{option}: unsupported option '{next(iter(values))}'")
    return DriveSpec(node, path, fmt, read_only, "none", discard in ("unmap", "on"))


class DriveOpener:
    """Opens each drive's image; for a ``snapshot`` drive, a temporary overlay on it.

    ``kept_overlays`` (drive id and image -> overlay path), owned by the VM process, keeps an
    overlay for the machine built after a reset, as QEMU keeps its overlay until it exits: the
    guest's writes outlive a reboot but not the process. The owner deletes them
    (:func:`pyhv.block.overlay.remove_overlays`). Without it an overlay is deleted as soon as
    it is open: nothing is left behind, whatever ends the process."""

    def __init__(self, kept_overlays: Optional[Dict[str, str]] = None) -> None:
        self.kept_overlays = kept_overlays

    def open(self, drive: DriveSpec) -> BlockBackend:
        try:
            if not drive.snapshot or drive.read_only:
                return open_image(drive.path, drive.format, drive.read_only)
            return self._open_overlay(drive)
        except BlockError as err:
            raise ConfigError(f"drive '{drive.id}': {err}") from err

    def _open_overlay(self, drive: DriveSpec) -> BlockBackend:
        kept = self.kept_overlays
        key = f"{drive.id}:{os.path.realpath(drive.path)}"
        overlay = kept.get(key) if kept is not None else None
        if overlay is None:
            overlay = create_temporary_overlay(drive.path, drive.format)
            if kept is not None:
                kept[key] = overlay
        try:
            return open_image(overlay, "qcow2", read_only=False)
        finally:
            if kept is None:
                remove_overlays([overlay])

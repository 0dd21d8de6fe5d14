"""User-facing machine configuration: what `pyhv run` and domain XML both produce.

These are plain values, validated where they are parsed; :mod:`pyhv.machine` turns them
into runtime objects.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .errors import ConfigError

MiB = 1 << 20
DEFAULT_RAM = 128 * MiB
DEFAULT_ACCEL = ("kvm", "tcg")
KNOWN_ACCELS = ("kvm", "tcg")


@dataclass
class DeviceSpec:
    """One ``-device DRIVER,key=value,...``."""

    driver: str
    props: Dict[str, str] = field(default_factory=dict)


@dataclass
class QmpSocketSpec:
    """One ``-qmp unix:PATH,server=on[,wait=off]``: a QMP monitor listening on PATH."""

    path: str
    wait: bool  # the VM starts only once a client has connected (QEMU's default)


@dataclass
class MachineConfig:
    name: Optional[str] = None
    ram_size: int = DEFAULT_RAM
    smp: int = 1
    kernel: Optional[Path] = None
    initrd: Optional[str] = None  # a path, or a comma-separated module list for multiboot
    append: str = ""
    accel: Tuple[str, ...] = DEFAULT_ACCEL
    cpu: str = "pyhv64"
    serial: List[str] = field(default_factory=lambda: ["stdio"])
    no_reboot: bool = False
    devices: List[DeviceSpec] = field(default_factory=list)
    drives: List[str] = field(default_factory=list)  # -drive option texts, in order
    blockdevs: List[str] = field(default_factory=list)  # -blockdev option texts, in order
    chardevs: Dict[str, str] = field(default_factory=dict)  # -chardev id -> back-end spec
    netdevs: List[str] = field(default_factory=list)  # -netdev option texts, in order
    # The software CPU's clock: 2**icount_shift ns per instruction (None: host time).
    icount_shift: Optional[int] = 0
    icount_sleep: bool = True
    decompress: Optional[bool] = None  # host-side bzImage decompression; None = default
    seed: Optional[int] = None  # -seed: the guest's boot RNG seed derived from it (None: random)
    qmp: List[QmpSocketSpec] = field(default_factory=list)  # the VM process's QMP monitors
    snapshot: bool = False  # -snapshot: every -drive writes to a temporary overlay
    pidfile: Optional[str] = None  # -pidfile: the VM process's PID, written and locked there
    daemonize: bool = False  # -daemonize: the VM runs detached; pyhv run returns once it started


_SIZE_SUFFIX = {"": MiB, "B": 1, "K": 1 << 10, "M": MiB, "G": 1 << 30, "T": 1 << 40}


def parse_memory_size(text: str) -> int:
    """QEMU's -m: '512', '512M', '2G', 'size=1G' (a bare number means MiB)."""
    spec = text
    for part in text.split(","):
        if part.startswith("size="):
            spec = part[len("size="):]
            break
        if "=" not in part:
            spec = part
            break
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([BKMGT]?)i?B?\s*", spec, re.IGNORECASE)
    if not m:
        raise ConfigError(f"-m {text}: not a memory size (examples: 512, 512M, 2G)")
    size = int(float(m.group(1)) * _SIZE_SUFFIX[m.group(2).upper()])
    if size < 2 * MiB:
        raise ConfigError(f"-m {text}: guest RAM must be at least 2 MiB")
    host = host_memory()
    if host and size > host:
        raise ConfigError(f"-m {text}: {size // MiB} MiB is more than this host's {host // MiB} MiB of RAM")
    return size


def host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def parse_accel(text: str) -> Tuple[str, ...]:
    """'kvm', 'tcg', 'kvm:tcg' (first that works), and QEMU's 'kvm,thread=single' options."""
    names = []
    for choice in text.split(":"):
        name = choice.split(",")[0].strip()
        if name not in KNOWN_ACCELS:
            raise ConfigError(f"-accel {text}: unknown accelerator '{name}' (known: {', '.join(KNOWN_ACCELS)})")
        names.append(name)
    return tuple(names)


def parse_device(text: str) -> DeviceSpec:
    parts = text.split(",")
    driver = parts[0].strip()
    if not driver:
        raise ConfigError(f"-device {text}: missing driver name")
    props = {}
    for part in parts[1:]:
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"-device {text}: property '{part}' needs a value (key=value)")
        props[key.strip()] = value.strip()
    return DeviceSpec(driver, props)


def parse_chardev(text: str) -> Tuple[str, str]:
    """QEMU's ``-chardev BACKEND,id=ID,...`` → (id, the back-end spec pyhv.chardev opens)."""
    parts = text.split(",")
    backend, props = parts[0], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        props[key] = value if sep else "on"
    chardev_id = props.pop("id", "")
    if not chardev_id:
        raise ConfigError(f"-chardev {text}: missing id=")
    if backend == "stdio":
        signal = props.pop("signal", None)
        spec = "stdio" if signal is None else f"stdio,signal={signal}"
    elif backend == "null":
        spec = "null"
    elif backend == "file":
        spec = "file:" + props.pop("path", "")
        if spec == "file:":
            raise ConfigError(f"-chardev {text}: file needs path=")
    elif backend == "socket":
        path = props.pop("path", "")
        if not path:
            raise ConfigError(f"-chardev {text}: pyhv supports unix sockets only (path=)")
        server = props.pop("server", "off") == "on"
        wait = props.pop("wait", "on") == "on"
        spec = f"unix:{path}" + (",server" if server else "") + ("" if wait else ",nowait")
    else:
        raise ConfigError(f"-chardev {text}: unsupported back-end '{backend}' (stdio, null, file, socket)")
    if props:
        raise ConfigError(f"-chardev {text}: unsupported property '{next(iter(props))}'")
    return chardev_id, spec


MAX_ICOUNT_SHIFT = 10


def parse_icount(text: str) -> Tuple[Optional[int], bool]:
    """QEMU's ``-icount [shift=]N|auto[,sleep=on|off]`` → (shift, sleep); pyhv also takes
    ``off`` for host time. ``auto`` means shift 0 (pyhv does not adapt the rate)."""
    shift: Optional[int] = 0
    sleep = True
    for index, part in enumerate(text.split(",")):
        key, sep, value = part.partition("=")
        if not sep and index == 0:
            key, value = "shift", key
        if key == "shift":
            if value == "off":
                shift = None
            elif value == "auto":
                shift = 0
            else:
                shift = parse_int(value, "-icount shift")
                if not 0 <= shift <= MAX_ICOUNT_SHIFT:
                    raise ConfigError(f"-icount {text}: shift must be 0..{MAX_ICOUNT_SHIFT} (2**shift ns per instruction)")
        elif key == "sleep" and value in ("on", "off"):
            sleep = value == "on"
        else:
            raise ConfigError(f"-icount {text}: unsupported '{part}' (shift=N|auto|off, sleep=on|off)")
    return shift, sleep


def parse_int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"{what}: '{text}' is not a number") from None

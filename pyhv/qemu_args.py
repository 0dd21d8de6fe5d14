"""QEMU's command-line syntax for `pyhv run`, so the same line runs under qemu-system-x86_64.

Options take one dash or two, as in QEMU. Anything pyhv does not support is an error
naming the option, never silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

from .chardev import parse_unix_spec
from .config import (MachineConfig, QmpSocketSpec, parse_accel, parse_chardev, parse_device, parse_icount,
                     parse_int, parse_memory_size)
from .errors import ConfigError

Handler = Callable[[MachineConfig, str], None]


def _smp(cfg: MachineConfig, value: str) -> None:
    first = value.split(",")[0]
    cpus = parse_int(first.partition("=")[2] if first.startswith("cpus=") else first, "-smp")
    if cpus != 1:
        raise ConfigError(f"-smp {value}: only 1 vCPU is supported so far")
    cfg.smp = cpus


def _machine(cfg: MachineConfig, value: str) -> None:
    parts = value.split(",")
    for part in parts:
        key, sep, val = part.partition("=")
        if not sep:
            if key not in ("pc", "q35", "microvm", "pc-i440fx", "none", ""):
                raise ConfigError(f"-machine {value}: unknown machine type '{key}' (pyhv provides a pc-like machine)")
        elif key == "accel":
            cfg.accel = parse_accel(val)
        else:
            raise ConfigError(f"-machine {value}: unsupported property '{key}'")


def _serial(cfg: MachineConfig, value: str) -> None:
    cfg.serial.append(value)


def _chardev(cfg: MachineConfig, value: str) -> None:
    chardev_id, spec = parse_chardev(value)
    if chardev_id in cfg.chardevs:
        raise ConfigError(f"-chardev {value}: id '{chardev_id}' is already used")
    cfg.chardevs[chardev_id] = spec


def _qmp(cfg: MachineConfig, value: str) -> None:
    """``-qmp unix:PATH,server=on[,wait=off]``; QEMU's other back-ends are refused by name."""
    if not value.startswith("unix:"):
        raise ConfigError(f"-qmp {value}: pyhv serves QMP on unix sockets only "
                          "(-qmp unix:PATH,server=on,wait=off)")
    path, server, wait = parse_unix_spec(value, f"-qmp {value}")
    if not server:
        raise ConfigError(f"-qmp {value}: pyhv's monitor listens for clients: add server=on")
    if any(spec.path == path for spec in cfg.qmp):
        raise ConfigError(f"-qmp {value}: {path} is already a QMP socket")
    cfg.qmp.append(QmpSocketSpec(path, wait))


def _mon(cfg: MachineConfig, value: str) -> None:
    """``-mon chardev=ID,mode=control``: QMP on the unix socket of ``-chardev socket,id=ID,...``
    (libvirt's spelling of -qmp); the chardev is then the monitor's, not a console's."""
    props = dict(part.partition("=")[::2] for part in value.split(","))
    chardev_id = props.pop("chardev", "")
    mode = props.pop("mode", "readline")
    props.pop("id", None)  # a name for the monitor object: nothing refers to it here
    if props.pop("pretty", "off") != "off":
        raise ConfigError(f"-mon {value}: pyhv's QMP output is not pretty-printed (pretty=off)")
    if props:
        raise ConfigError(f"-mon {value}: unsupported property '{next(iter(props))}'")
    if mode != "control":
        raise ConfigError(f"-mon {value}: pyhv has no human monitor (mode=readline); use mode=control (QMP)")
    spec = cfg.chardevs.pop(chardev_id, None)
    if spec is None:
        raise ConfigError(f"-mon {value}: no -chardev with id '{chardev_id}' before it")
    if not spec.startswith("unix:"):
        raise ConfigError(f"-mon {value}: pyhv serves QMP on unix sockets only (-chardev socket,path=...)")
    _qmp(cfg, spec)


def _monitor(cfg: MachineConfig, value: str) -> None:
    """``-monitor none`` (scripts give it to keep QEMU's human monitor off stdio) is pyhv's
    behaviour already; any other human monitor is refused, pointing at QMP."""
    if value != "none":
        raise ConfigError(f"-monitor {value}: pyhv has no human monitor (HMP); use -qmp "
                          "unix:PATH,server=on,wait=off (QMP's human-monitor-command answers "
                          "'info status' and 'info registers')")


def _icount(cfg: MachineConfig, value: str) -> None:
    cfg.icount_shift, cfg.icount_sleep = parse_icount(value)


def _display(cfg: MachineConfig, value: str) -> None:
    if value.split(",")[0] != "none":
        raise ConfigError(f"-display {value}: pyhv has no graphical display (use -display none or -nographic)")


def _no_decompress(cfg: MachineConfig, value: str) -> None:
    cfg.decompress = False


def _set(attr: str, convert: Callable[[str], object] = str) -> Handler:
    def handler(cfg: MachineConfig, value: str) -> None:
        setattr(cfg, attr, convert(value))
    return handler


def _flag(attr: str, value: object) -> Handler:
    def handler(cfg: MachineConfig, _unused: str) -> None:
        setattr(cfg, attr, value)
    return handler


def _ignore(_cfg: MachineConfig, _value: str) -> None:
    """Options whose QEMU meaning is already pyhv's behaviour."""


def _seed(cfg: MachineConfig, value: str) -> None:
    seed = parse_int(value, "-seed")
    if not 0 <= seed < 1 << 64:
        raise ConfigError(f"-seed {value}: the seed must be a number from 0 to 2**64-1")
    cfg.seed = seed


def _decompress(cfg: MachineConfig, value: str) -> None:
    if value not in ("on", "off", "auto"):
        raise ConfigError(f"-kernel-decompress {value}: use on, off or auto")
    cfg.decompress = {"on": True, "off": False, "auto": None}[value]


# QEMU's -nic models that name pyhv's one network card ("virtio" is QEMU's alias on x86).
NIC_MODELS = ("virtio-net-pci", "virtio")


def _nic(cfg: MachineConfig, value: str) -> None:
    """``-nic TYPE[,back-end options][,model=M][,mac=MAC]``: a -netdev and the card on it in
    one option, as QEMU's; ``-nic none`` adds nothing (pyhv has no default card)."""
    kind, _, rest = value.partition(",")
    kind = kind.strip()
    if kind == "none" and not rest:
        return
    if kind == "user":
        raise ConfigError(f"-nic {value}: user-mode networking (slirp) is not built in; run passt and "
                          "connect to it with -netdev stream,... (see the README), or use tap")
    netdev_props: List[str] = []
    card_props: List[str] = []
    model = NIC_MODELS[0]
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, _, setting = part.partition("=")
        if key == "model":
            model = setting
        elif key == "mac":
            card_props.append(part)
        elif key == "id":
            raise ConfigError(f"-nic {value}: -nic takes no id= (use -netdev id=... and -device for that)")
        else:
            netdev_props.append(part)
    if model not in NIC_MODELS:
        raise ConfigError(f"-nic {value}: model={model} is not a card pyhv has (virtio-net-pci)")
    # A name no -netdev id= is likely to take, as QEMU's own "__org.qemu.nic0".
    netdev_id = f"__pyhv.nic{len(cfg.netdevs)}"
    cfg.netdevs.append(",".join([kind, f"id={netdev_id}", *netdev_props]))
    cfg.devices.append(parse_device(",".join([NIC_MODELS[0], f"netdev={netdev_id}", *card_props])))


# name -> (takes a value, handler)
OPTIONS: Dict[str, Tuple[bool, Handler]] = {
    "m": (True, _set("ram_size", parse_memory_size)),
    "smp": (True, _smp),
    "kernel": (True, _set("kernel", Path)),
    "initrd": (True, _set("initrd")),
    "append": (True, _set("append")),
    "accel": (True, _set("accel", parse_accel)),
    "enable-kvm": (False, _flag("accel", ("kvm",))),
    "machine": (True, _machine),
    "M": (True, _machine),
    "cpu": (True, _set("cpu")),
    "name": (True, lambda cfg, v: setattr(cfg, "name", v.split(",")[0].partition("=")[2] or v.split(",")[0])),
    "serial": (True, _serial),
    "nographic": (False, _ignore),  # the serial console is on stdio unless -serial says otherwise
    "nodefaults": (False, _ignore),
    "display": (True, _display),
    "no-reboot": (False, _flag("no_reboot", True)),
    "device": (True, lambda cfg, v: cfg.devices.append(parse_device(v))),
    "drive": (True, lambda cfg, v: cfg.drives.append(v)),
    "blockdev": (True, lambda cfg, v: cfg.blockdevs.append(v)),
    "chardev": (True, _chardev),
    "netdev": (True, lambda cfg, v: cfg.netdevs.append(v)),
    "nic": (True, _nic),
    "icount": (True, _icount),
    "qmp": (True, _qmp),
    "monitor": (True, _monitor),
    "mon": (True, _mon),
    "snapshot": (False, _flag("snapshot", True)),
    "pidfile": (True, _set("pidfile")),
    "daemonize": (False, _flag("daemonize", True)),
    "seed": (True, _seed),
    # pyhv's own: host-side decompression of a bzImage payload (on/off/auto)
    "kernel-decompress": (True, _decompress),
}


def parse_run_args(argv: List[str]) -> MachineConfig:
    """Parse `pyhv run` arguments (QEMU syntax) into a MachineConfig."""
    cfg = MachineConfig(serial=[])
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            raise ConfigError(f"unexpected argument '{arg}' (options start with '-'; see pyhv run -help)")
        name = arg.lstrip("-")
        name, eq, inline = name.partition("=")
        if name not in OPTIONS:
            raise ConfigError(f"unsupported option '{arg}' (pyhv run -help lists the options it knows)")
        takes_value, handler = OPTIONS[name]
        if takes_value:
            if eq:
                value = inline
            else:
                i += 1
                if i >= len(argv):
                    raise ConfigError(f"option '{arg}' needs a value")
                value = argv[i]
        else:
            if eq:
                raise ConfigError(f"option '-{name}' takes no value")
            value = ""
        handler(cfg, value)
        i += 1
    if not cfg.serial:
        cfg.serial = ["stdio"]
    if cfg.kernel is None:
        raise ConfigError("no guest given: use -kernel FILE (bzImage, ELF vmlinux or multiboot image)")
    return cfg


def usage() -> str:
    lines = ["usage: pyhv run [options]   (QEMU syntax; a subset of qemu-system-x86_64's options)", ""]
    for name, (takes_value, _) in OPTIONS.items():
        lines.append(f"  -{name}{' VALUE' if takes_value else ''}")
    return "\n".join(lines)

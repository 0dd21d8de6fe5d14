"""A DomainConfig turned into the MachineConfig that `pyhv run` builds machines from."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List, Optional

from ..config import DeviceSpec, MachineConfig
from .domain import DomainConfig, DomainXmlError
from .domain_xml import effective_serials

CPU_FOR_MODE = {"host-passthrough": "host", "custom": "pyhv64"}
NET_DEVICE = "virtio-net-pci"


def check_files(dom: DomainConfig) -> None:
    """The kernel, initrd and disk images must exist before a domain is defined or started."""
    named = [("kernel", dom.kernel)] + ([("initrd", dom.initrd)] if dom.initrd else [])
    named += [(f"disk {disk.target}", disk.source) for disk in dom.disks]
    for what, path in named:
        if not os.path.isfile(path):
            raise DomainXmlError(f"domain '{dom.name}': {what} file '{path}' does not exist")


def _drive_text(index: int, dom: DomainConfig) -> str:
    disk = dom.disks[index]
    path = disk.source.replace(",", ",,")  # QEMU option syntax: ',,' is a literal comma
    readonly = "on" if disk.readonly else "off"
    # libvirt's <transient/> is QEMU's snapshot=on: an overlay the domain process deletes.
    snapshot = "on" if disk.transient else "off"
    return (f"file={path},if=virtio,format={disk.format},readonly={readonly},snapshot={snapshot},"
            f"id={disk.target}")


def check_interfaces(dom: DomainConfig) -> None:
    """What can be known before the VM process starts: the helpers interfaces need are installed."""
    for iface in dom.interfaces:
        if iface.type == "user" and shutil.which("passt") is None:
            raise DomainXmlError(f"domain '{dom.name}': <interface type='user'> ({iface.mac}) needs passt for "
                                 "user-mode networking, which is not installed (Debian package 'passt')")


def to_machine_config(dom: DomainConfig, console_paths: List[str],
                      netdevs: Optional[List[str]] = None) -> MachineConfig:
    """The machine for ``dom``; serial port i is served on ``console_paths[i]``.

    Interface i becomes a virtio-net-pci card on ``-netdev`` id ``hostnet<i>``; ``netdevs``
    are those back-ends' texts, which the VM process makes (:mod:`pyhv.virt.domain_ifaces`).
    """
    check_files(dom)
    check_interfaces(dom)
    serials = effective_serials(dom)
    if len(console_paths) < len(serials):
        raise ValueError("a console path is needed for every serial port")
    cfg = MachineConfig(
        name=dom.name,
        ram_size=dom.memory_kib * 1024,
        smp=dom.vcpus,
        kernel=Path(dom.kernel),
        initrd=dom.initrd,
        append=dom.cmdline,
        accel=("kvm",) if dom.type == "kvm" else ("tcg",),
        cpu=CPU_FOR_MODE[dom.cpu_mode],
        serial=[f"unix:{path},server,nowait" for path in console_paths[:len(serials)]] or ["none"],
        no_reboot=dom.on_reboot == "destroy",
    )
    cfg.drives = [_drive_text(i, dom) for i in range(len(dom.disks))]
    cfg.devices = [DeviceSpec("virtio-rng-device") for _ in dom.rngs]
    cfg.devices += [DeviceSpec(NET_DEVICE, {"netdev": f"hostnet{i}", "mac": iface.mac})
                    for i, iface in enumerate(dom.interfaces)]
    cfg.netdevs = list(netdevs or [])
    return cfg

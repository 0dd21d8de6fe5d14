"""A DomainConfig written back as XML, normalized the way ``virsh dumpxml`` shows it.

Defaults are spelled out (uuid, MACs, memory in KiB, lifecycle actions, serial targets),
elements come in libvirt's order, and the result validates against libvirt's domain.rng.
A running domain's live XML adds ``id`` and the console socket pyhv actually serves.
"""

from __future__ import annotations

from typing import Optional

from .domain import CharDevice, DomainConfig
from .xmlnode import XmlNode, to_text


def domain_to_xml(dom: DomainConfig, domain_id: Optional[int] = None,
                  console_path: Optional[str] = None) -> str:
    """The normalized document; ``domain_id`` and ``console_path`` describe a running domain."""
    root = XmlNode("domain", {"type": dom.type})
    if domain_id is not None:
        root.attrib["id"] = str(domain_id)
    root.add("name", text=dom.name)
    root.add("uuid", text=dom.uuid)
    if dom.title:
        root.add("title", text=dom.title)
    if dom.description:
        root.add("description", text=dom.description)
    root.add("memory", {"unit": "KiB"}, str(dom.memory_kib))
    root.add("currentMemory", {"unit": "KiB"}, str(dom.current_memory_kib))
    root.add("vcpu", {"placement": "static"}, str(dom.vcpus))
    _os(root, dom)
    if dom.acpi or dom.apic:
        features = root.add("features")
        if dom.acpi:
            features.add("acpi")
        if dom.apic:
            features.add("apic")
    if dom.cpu_mode == "host-passthrough":
        root.add("cpu", {"mode": "host-passthrough", "check": "none", "migratable": "on"})
    else:
        cpu = root.add("cpu", {"mode": "custom", "match": "exact", "check": "none"})
        cpu.add("model", {"fallback": "forbid"}, dom.cpu_model)
    root.add("clock", {"offset": dom.clock_offset})
    root.add("on_poweroff", text=dom.on_poweroff)
    root.add("on_reboot", text=dom.on_reboot)
    root.add("on_crash", text=dom.on_crash)
    _devices(root, dom, console_path)
    return to_text(root)


def _os(root: XmlNode, dom: DomainConfig) -> None:
    os_node = root.add("os")
    os_node.add("type", {"arch": dom.arch, "machine": dom.machine}, "hvm")
    os_node.add("kernel", text=dom.kernel)
    if dom.initrd:
        os_node.add("initrd", text=dom.initrd)
    if dom.cmdline:
        os_node.add("cmdline", text=dom.cmdline)


def _devices(root: XmlNode, dom: DomainConfig, console_path: Optional[str]) -> None:
    devices = root.add("devices")
    if dom.emulator:
        devices.add("emulator", text=dom.emulator)
    for disk in dom.disks:
        node = devices.add("disk", {"type": "file", "device": "disk"})
        node.add("driver", {"name": "qemu", "type": disk.format})
        node.add("source", {"file": disk.source})
        node.add("target", {"dev": disk.target, "bus": "virtio"})
        if disk.readonly:
            node.add("readonly")
        if disk.transient:
            node.add("transient")
    for iface in dom.interfaces:
        node = devices.add("interface", {"type": iface.type})
        node.add("mac", {"address": iface.mac})
        if iface.type in ("network", "bridge"):
            node.add("source", {iface.type: iface.source})
        if iface.target_dev:
            node.add("target", {"dev": iface.target_dev})
        node.add("model", {"type": iface.model})
    serials = effective_serials(dom)
    for index, serial in enumerate(serials):
        if index == 0 and console_path:
            serial = live_console(console_path)
        node = devices.add("serial", {"type": serial.type})
        _source(node, serial, serial.path)
        target = node.add("target", {"type": "isa-serial", "port": str(serial.port)})
        target.add("model", {"name": "isa-serial"})
    if serials:
        first = live_console(console_path) if console_path else serials[0]
        node = devices.add("console", {"type": first.type})
        _source(node, first, first.path)
        node.add("target", {"type": "serial", "port": str(first.port)})
    for path in dom.rngs:
        node = devices.add("rng", {"model": "virtio"})
        node.add("backend", {"model": "random"}, path)
    devices.add("memballoon", {"model": "none"})


def _source(node: XmlNode, dev: CharDevice, path: Optional[str]) -> None:
    if dev.type == "unix":
        node.add("source", {"mode": dev.mode, "path": path})
    elif path:
        node.add("source", {"path": path})


def live_console(path: str) -> CharDevice:
    """What a running domain's first serial port is: pyhv serves every console on a unix socket."""
    return CharDevice("unix", path, "bind", 0)


def effective_serials(dom: DomainConfig) -> list:
    """The machine's serial ports: <serial> elements, or a lone <console> standing for COM1.

    libvirt writes every serial console twice, as <serial> and as a <console> of target
    type serial naming the same port; the console is then no device of its own.
    """
    if dom.serials:
        return list(dom.serials)
    return list(dom.consoles[:1])

"""Domain XML, libvirt's subset that pyhv runs, read into a DomainConfig (libvirt's names).

Reading is strict: every attribute and child element is either understood, or listed in
:data:`IGNORED_ELEMENTS` with the reason it has no meaning for pyhv (libvirt writes PCI
addresses and USB controllers into every domain), or unsupported. Unsupported elements
are an error naming the element and its line, unless the caller passes
``ignore_unsupported``; then they are listed in :attr:`DomainConfig.ignored`. Nothing is
dropped without a word. :mod:`pyhv.virt.domain_xml` writes a DomainConfig back.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set

from ..errors import ConfigError
from .xmlnode import XmlNode, parse

MEMORY_UNITS: Dict[str, int] = {
    "b": 1, "bytes": 1, "KB": 1000, "k": 1024, "KiB": 1024, "MB": 1000 ** 2, "M": 1 << 20,
    "MiB": 1 << 20, "GB": 1000 ** 3, "G": 1 << 30, "GiB": 1 << 30, "TB": 1000 ** 4,
    "T": 1 << 40, "TiB": 1 << 40,
}
MIN_MEMORY_KIB = 2048
DOMAIN_TYPES = {"kvm": ("kvm",), "qemu": ("tcg",)}
LIFECYCLE_ACTIONS = ("destroy", "restart")
INTERFACE_TYPES = {"network": "network", "bridge": "bridge", "ethernet": None, "user": None}
CHAR_TYPES = ("pty", "unix")
MACHINE_TYPES = re.compile(r"(pc|q35|microvm)([-\w.]*)$")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+:-]*$")
MAC_PATTERN = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}$")
MAX_IFNAME_BYTES = 15  # IFNAMSIZ less the terminating NUL
IFNAME_FORBIDDEN = re.compile(r"[/:\s]")
AUTO_TAP_PREFIXES = ("vnet", "macvtap", "macvlan")

# Elements libvirt writes that describe nothing pyhv could act on; accepted with a notice.
IGNORED_ELEMENTS: Dict[str, str] = {
    "address": "virtio devices sit on virtio-mmio, PCI addresses do not apply",
    "alias": "device aliases are not used",
    "boot": "direct kernel boot has no boot order",
    "controller": "the machine's buses are fixed",
    "input": "the i8042 PS/2 keyboard and mouse are always present",
    "audio": "pyhv has no sound device",
    "timer": "clock sources are fixed",
    "pae": "PAE is always available",
    "vmport": "there is no VMware port",
    "resource": "no cgroup partition is used",
    "seclabel": "no security driver is used",
    "metadata": "application metadata is not kept",
}


class DomainXmlError(ConfigError):
    """A domain XML document pyhv cannot accept; the message names the file, line and element."""


@dataclass
class Disk:
    source: str
    target: str
    format: str = "raw"
    readonly: bool = False
    transient: bool = False  # <transient/>: the guest's writes are dropped when the domain stops


@dataclass
class Interface:
    type: str  # network, bridge, ethernet, user
    mac: str
    source: Optional[str] = None  # the network or bridge name
    target_dev: Optional[str] = None  # the tap device of type ethernet
    model: str = "virtio"


@dataclass
class CharDevice:
    """A <serial> or <console>: ``pty`` (pyhv serves a unix socket instead) or ``unix``."""

    type: str
    path: Optional[str] = None
    mode: str = "bind"
    port: int = 0


@dataclass
class DomainConfig:
    name: str
    uuid: str
    type: str = "kvm"
    title: Optional[str] = None
    description: Optional[str] = None
    memory_kib: int = 131072
    current_memory_kib: int = 131072
    vcpus: int = 1
    arch: str = "x86_64"
    machine: str = "pc"
    kernel: str = ""
    initrd: Optional[str] = None
    cmdline: str = ""
    acpi: bool = False
    apic: bool = False
    cpu_mode: str = "custom"  # host-passthrough, or custom with cpu_model
    cpu_model: str = "pyhv64"
    clock_offset: str = "utc"
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    emulator: Optional[str] = None
    disks: List[Disk] = field(default_factory=list)
    interfaces: List[Interface] = field(default_factory=list)
    serials: List[CharDevice] = field(default_factory=list)
    consoles: List[CharDevice] = field(default_factory=list)
    rngs: List[str] = field(default_factory=list)  # backend device paths
    ignored: List[str] = field(default_factory=list)  # notices: what was read but has no effect


def random_mac() -> str:
    """A MAC in QEMU's 52:54:00 prefix, as libvirt assigns."""
    tail = uuidlib.uuid4().bytes[:3]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


class _Reader:
    """Walks the tree, remembering what was consumed so leftovers can be reported.

    Network XML (:mod:`pyhv.virt.network`) reads with a subclass that sets its own error
    class and ignored elements.
    """

    error_class = DomainXmlError
    ignored_elements = IGNORED_ELEMENTS

    def __init__(self, source: str, ignore_unsupported: bool) -> None:
        self.source = source
        self.ignore_unsupported = ignore_unsupported
        self.notices: List[str] = []
        self._used: Set[int] = set()
        self._used_attrs: Dict[int, Set[str]] = {}

    def error(self, node: XmlNode, problem: str) -> DomainXmlError:
        return self.error_class(f"{self.source}: line {node.line}: <{node.tag}>: {problem}")

    def attr(self, node: XmlNode, name: str, default: Optional[str] = None,
             choices: Optional[tuple] = None) -> Optional[str]:
        self._used_attrs.setdefault(id(node), set()).add(name)
        value = node.attrib.get(name, default)
        if choices is not None and value is not None and value not in choices:
            raise self.error(node, f"{name}='{value}' is not supported (supported: {', '.join(choices)})")
        return value

    def child(self, node: XmlNode, tag: str) -> Optional[XmlNode]:
        found = self.children(node, tag)
        if len(found) > 1:
            raise self.error(found[1], f"appears more than once in <{node.tag}>")
        return found[0] if found else None

    def children(self, node: XmlNode, tag: str) -> List[XmlNode]:
        found = [c for c in node.children if c.tag == tag]
        self._used.update(id(c) for c in found)
        return found

    def text(self, node: XmlNode, tag: str, default: Optional[str] = None) -> Optional[str]:
        found = self.child(node, tag)
        if found is None:
            return default
        self.finish(found)
        return found.text

    def finish(self, node: XmlNode) -> None:
        """Report the attributes and children of ``node`` that nothing consumed."""
        used = self._used_attrs.get(id(node), set())
        for name in node.attrib:
            if name not in used:
                self.unsupported(node, f"attribute {name}='{node.attrib[name]}' of <{node.tag}>")
        for child in node.children:
            if id(child) in self._used:
                continue
            reason = self.ignored_elements.get(child.tag)
            if reason is not None:
                self.notices.append(f"line {child.line}: <{child.tag}> ignored: {reason}")
            else:
                self.unsupported(child, f"element <{child.tag}> in <{node.tag}>")

    def unsupported(self, node: XmlNode, what: str) -> None:
        if self.ignore_unsupported:
            self.notices.append(f"line {node.line}: {what} ignored: not supported by pyhv")
            return
        raise self.error_class(f"{self.source}: line {node.line}: {what} is not supported by pyhv"
                             " (--ignore-unsupported skips it)")


def parse_domain(text: str, source: str = "domain XML", ignore_unsupported: bool = False) -> DomainConfig:
    """Read a domain document; uuid and MACs are generated where absent."""
    root = parse(text, source)
    r = _Reader(source, ignore_unsupported)
    if root.tag != "domain":
        raise r.error(root, "the root element must be <domain>")
    dom_type = r.attr(root, "type")
    if dom_type is None:
        raise r.error(root, "the type attribute is missing (kvm or qemu)")
    if dom_type not in DOMAIN_TYPES:
        raise r.error(root, f"type='{dom_type}' is not supported (kvm: /dev/kvm, qemu: the software CPU)")
    name = r.text(root, "name")
    if not name:
        raise r.error(root, "<name> is missing")
    if not NAME_PATTERN.match(name):
        raise r.error(root.find("name"), f"'{name}' is not a usable domain name (letters, digits, _ . + : -)")
    dom = DomainConfig(name=name, uuid=_uuid(r, root), type=dom_type)
    dom.title = r.text(root, "title")
    dom.description = r.text(root, "description")
    _memory(r, root, dom)
    _vcpu(r, root, dom)
    _os(r, root, dom)
    _features(r, root, dom)
    _cpu(r, root, dom)
    clock = r.child(root, "clock")
    if clock is not None:
        dom.clock_offset = r.attr(clock, "offset", "utc", ("utc", "localtime"))
        r.finish(clock)
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        node = r.child(root, event)
        if node is not None:
            r.finish(node)
            if node.text not in LIFECYCLE_ACTIONS:
                raise r.error(node, f"'{node.text}' is not supported (supported: {', '.join(LIFECYCLE_ACTIONS)})")
            setattr(dom, event, node.text)
    devices = r.child(root, "devices")
    if devices is not None:
        _devices(r, devices, dom)
    r.finish(root)
    dom.ignored = r.notices
    return dom


def _uuid(r: _Reader, root: XmlNode) -> str:
    text = r.text(root, "uuid")
    if text is None:
        return str(uuidlib.uuid4())
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        raise r.error(root.find("uuid"), f"'{text}' is not a UUID") from None


def _kib(r: _Reader, node: XmlNode) -> int:
    unit = r.attr(node, "unit", "KiB")
    if unit not in MEMORY_UNITS:
        raise r.error(node, f"unknown unit '{unit}' (known: {', '.join(MEMORY_UNITS)})")
    r.finish(node)
    if not node.text.isdigit():
        raise r.error(node, f"'{node.text}' is not a whole number")
    return (int(node.text) * MEMORY_UNITS[unit] + 1023) // 1024


def _memory(r: _Reader, root: XmlNode, dom: DomainConfig) -> None:
    memory = r.child(root, "memory")
    if memory is None:
        raise r.error(root, "<memory> is missing")
    dom.memory_kib = _kib(r, memory)
    if dom.memory_kib < MIN_MEMORY_KIB:
        raise r.error(memory, f"{dom.memory_kib} KiB is less than the {MIN_MEMORY_KIB} KiB a guest needs")
    current = r.child(root, "currentMemory")
    dom.current_memory_kib = dom.memory_kib if current is None else _kib(r, current)
    if dom.current_memory_kib > dom.memory_kib:
        raise r.error(current, "currentMemory is larger than memory")
    if dom.current_memory_kib < dom.memory_kib:
        r.notices.append(f"line {current.line}: <currentMemory> has no effect: pyhv has no balloon, "
                         "the guest gets all of <memory>")


def _vcpu(r: _Reader, root: XmlNode, dom: DomainConfig) -> None:
    node = r.child(root, "vcpu")
    if node is None:
        return
    r.attr(node, "placement", "static", ("static",))
    r.finish(node)
    if not node.text.isdigit() or int(node.text) < 1:
        raise r.error(node, f"'{node.text}' is not a vCPU count")
    if int(node.text) != 1:
        raise r.error(node, f"{node.text} vCPUs: pyhv runs 1 vCPU so far")
    dom.vcpus = int(node.text)


def _os(r: _Reader, root: XmlNode, dom: DomainConfig) -> None:
    node = r.child(root, "os")
    if node is None:
        raise r.error(root, "<os> is missing")
    os_type = r.child(node, "type")
    if os_type is None or os_type.text != "hvm":
        raise r.error(node if os_type is None else os_type, "<type>hvm</type> is required")
    dom.arch = r.attr(os_type, "arch", "x86_64", ("x86_64",))
    machine = r.attr(os_type, "machine", "pc")
    if not MACHINE_TYPES.match(machine):
        raise r.error(os_type, f"machine='{machine}' is not supported (pyhv provides a pc-like machine)")
    r.finish(os_type)
    kernel = r.text(node, "kernel")
    if not kernel:
        raise r.error(node, "<kernel> is missing: pyhv boots domains from a kernel file (direct kernel boot)")
    dom.kernel = kernel
    dom.initrd = r.text(node, "initrd") or None
    dom.cmdline = r.text(node, "cmdline", "")
    r.finish(node)


def _features(r: _Reader, root: XmlNode, dom: DomainConfig) -> None:
    node = r.child(root, "features")
    if node is None:
        return
    for name in ("acpi", "apic"):
        feature = r.child(node, name)
        if feature is not None:
            r.finish(feature)
            setattr(dom, name, True)
    r.finish(node)


def _cpu(r: _Reader, root: XmlNode, dom: DomainConfig) -> None:
    node = r.child(root, "cpu")
    if node is None:
        return
    mode = r.attr(node, "mode", "custom", ("host-passthrough", "host-model", "custom", "maximum"))
    r.attr(node, "check")
    r.attr(node, "migratable")
    r.attr(node, "match", None, ("exact", "minimum", "strict"))
    if mode in ("host-passthrough", "host-model", "maximum"):
        dom.cpu_mode = "host-passthrough"
    model = r.child(node, "model")
    if model is not None:
        r.attr(model, "fallback")
        r.finish(model)
        if mode == "custom" and model.text not in ("pyhv64", "qemu64"):
            r.notices.append(f"line {model.line}: CPU model '{model.text}' runs as pyhv64, "
                             "pyhv's one software CPU model")
    r.finish(node)


def _devices(r: _Reader, node: XmlNode, dom: DomainConfig) -> None:
    readers: Dict[str, Callable[[_Reader, XmlNode, DomainConfig], None]] = {
        "disk": _disk, "interface": _interface, "serial": _serial, "console": _console,
        "rng": _rng, "memballoon": _memballoon,
    }
    emulator = r.child(node, "emulator")
    if emulator is not None:
        r.finish(emulator)
        dom.emulator = emulator.text
        r.notices.append(f"line {emulator.line}: <emulator> is kept but not run: pyhv runs the domain itself")
    for child in node.children:
        reader = readers.get(child.tag)
        if reader is not None:
            r.children(node, child.tag)
            reader(r, child, dom)
    r.finish(node)


def _disk(r: _Reader, node: XmlNode, dom: DomainConfig) -> None:
    r.attr(node, "type", "file", ("file",))
    r.attr(node, "device", "disk", ("disk",))
    driver = r.child(node, "driver")
    fmt = "raw"
    if driver is not None:
        r.attr(driver, "name", "qemu", ("qemu",))
        fmt = r.attr(driver, "type", "raw", ("raw", "qcow2"))
        r.attr(driver, "cache", None, ("none", "writeback", "default"))
        r.finish(driver)
    source = r.child(node, "source")
    if source is None or not source.attrib.get("file"):
        raise r.error(node, "<source file='...'/> is missing")
    path = r.attr(source, "file")
    r.finish(source)
    target = r.child(node, "target")
    if target is None or not target.attrib.get("dev"):
        raise r.error(node, "<target dev='vdX' bus='virtio'/> is missing")
    dev = r.attr(target, "dev")
    r.attr(target, "bus", "virtio", ("virtio",))
    r.finish(target)
    if any(d.target == dev for d in dom.disks):
        raise r.error(target, f"target dev '{dev}' is used by another disk")
    readonly = r.child(node, "readonly")
    if readonly is not None:
        r.finish(readonly)
    transient = r.child(node, "transient")
    if transient is not None:
        r.attr(transient, "shareBacking", "no", ("no",))
        r.finish(transient)
    r.finish(node)
    dom.disks.append(Disk(path, dev, fmt, readonly is not None, transient is not None))


def interface_name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot name a Linux network interface, or None if it can."""
    if not name or name in (".", ".."):
        return f"'{name}' is not a network interface name"
    if len(name.encode()) > MAX_IFNAME_BYTES:
        return f"interface name '{name}' is longer than {MAX_IFNAME_BYTES} bytes"
    if IFNAME_FORBIDDEN.search(name):
        return f"interface name '{name}' contains '/', ':' or white space"
    return None


def _interface(r: _Reader, node: XmlNode, dom: DomainConfig) -> None:
    kind = r.attr(node, "type", None, tuple(INTERFACE_TYPES))
    if kind is None:
        raise r.error(node, "the type attribute is missing (network, bridge, ethernet, user)")
    iface = Interface(kind, "")
    mac = r.child(node, "mac")
    if mac is not None:
        address = (r.attr(mac, "address") or "").lower()
        r.finish(mac)
        if not MAC_PATTERN.match(address):
            raise r.error(mac, f"'{address}' is not a MAC address")
        if int(address[:2], 16) & 1:
            raise r.error(mac, f"'{address}' is a multicast address; a network card needs a unicast one")
        if any(other.mac == address for other in dom.interfaces):
            raise r.error(mac, f"MAC address {address} is used by another interface of this domain")
        iface.mac = address
    iface.mac = iface.mac or random_mac()
    source = r.child(node, "source")
    source_attr = INTERFACE_TYPES[kind]
    if source_attr is not None:
        if source is None or not source.attrib.get(source_attr):
            raise r.error(node, f"<source {source_attr}='...'/> is missing")
        iface.source = r.attr(source, source_attr)
        problem = interface_name_problem(iface.source) if kind == "bridge" else None
        if kind == "network" and not NAME_PATTERN.match(iface.source):
            problem = f"'{iface.source}' is not a usable network name"
        if problem:
            raise r.error(source, problem)
    if source is not None:
        r.finish(source)
    target = r.child(node, "target")
    if target is not None:
        dev = r.attr(target, "dev") or ""
        r.finish(target)
        problem = interface_name_problem(dev)
        if problem:
            raise r.error(target, problem)
        if kind == "user":
            r.notices.append(f"line {target.line}: <target dev='{dev}'> ignored: user networking uses no TAP device")
        elif dev.startswith(AUTO_TAP_PREFIXES):
            # libvirt reserves these prefixes for names it picks at each start; so does pyhv.
            r.notices.append(f"line {target.line}: <target dev='{dev}'> dropped: names starting with "
                             f"{', '.join(AUTO_TAP_PREFIXES)} are chosen anew at each start")
        else:
            iface.target_dev = dev
    model = r.child(node, "model")
    if model is not None:
        model_type = r.attr(model, "type", "virtio")
        r.finish(model)
        if model_type != "virtio":
            raise r.error(model, f"model type='{model_type}' is not supported: pyhv's network card is "
                                 "virtio-net (use <model type='virtio'/>)")
    r.finish(node)
    dom.interfaces.append(iface)


def _char_device(r: _Reader, node: XmlNode, target_types: tuple) -> CharDevice:
    kind = r.attr(node, "type", None, CHAR_TYPES)
    if kind is None:
        raise r.error(node, f"the type attribute is missing ({', '.join(CHAR_TYPES)})")
    dev = CharDevice(kind)
    source = r.child(node, "source")
    if kind == "unix":
        if source is None or not source.attrib.get("path"):
            raise r.error(node, "<source mode='bind' path='...'/> is missing")
        dev.path = r.attr(source, "path")
        dev.mode = r.attr(source, "mode", "bind", ("bind",))
    elif source is not None:
        r.attr(source, "path")  # a live pty path: given again at the next start
    if source is not None:
        r.finish(source)
    target = r.child(node, "target")
    if target is not None:
        r.attr(target, "type", None, target_types)
        port = r.attr(target, "port", "0")
        if not port.isdigit() or int(port) > 3:
            raise r.error(target, f"port '{port}': the machine has serial ports 0-3")
        dev.port = int(port)
        model = r.child(target, "model")
        if model is not None:
            r.attr(model, "name", None, ("isa-serial",))
            r.finish(model)
        r.finish(target)
    r.finish(node)
    return dev


def _serial(r: _Reader, node: XmlNode, dom: DomainConfig) -> None:
    dev = _char_device(r, node, ("isa-serial",))
    if any(s.port == dev.port for s in dom.serials):
        dev.port = len(dom.serials)
    dom.serials.append(dev)


def _console(r: _Reader, node: XmlNode, dom: DomainConfig) -> None:
    dom.consoles.append(_char_device(r, node, ("serial",)))


def _rng(r: _Reader, node: XmlNode, dom: DomainConfig) -> None:
    r.attr(node, "model", None, ("virtio",))
    backend = r.child(node, "backend")
    if backend is None:
        raise r.error(node, "<backend model='random'>/dev/urandom</backend> is missing")
    r.attr(backend, "model", None, ("random",))
    r.finish(backend)
    path = backend.text or "/dev/urandom"
    if path not in ("/dev/urandom", "/dev/random"):
        raise r.error(backend, f"'{path}': the rng back-end reads /dev/urandom or /dev/random")
    r.finish(node)
    dom.rngs.append(path)


def _memballoon(r: _Reader, node: XmlNode, dom: DomainConfig) -> None:
    model = r.attr(node, "model", None, ("none", "virtio"))
    if model == "virtio":
        r.notices.append(f"line {node.line}: <memballoon model='virtio'> ignored: pyhv has no balloon device")
    r.finish(node)

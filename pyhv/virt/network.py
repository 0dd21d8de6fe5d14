"""Virtual network XML, libvirt's subset that pyhv sets up, read into a NetworkConfig and written back.

A network is a Linux bridge with an IPv4 address on the host, optionally a dnsmasq serving
DHCP and DNS on it, and optionally forwarding to the outside (``nat`` masquerades,
``route`` and ``open`` only forward). Reading is as strict as for domains
(:mod:`pyhv.virt.domain`): what pyhv does not understand is an error naming the element and
its line. :func:`network_to_xml` writes the document back the way ``virsh net-dumpxml``
shows it, with the uuid, bridge name and MAC filled in; it validates against libvirt's
``network.rng``.
"""

from __future__ import annotations

import ipaddress
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import ConfigError
from .domain import MAC_PATTERN, NAME_PATTERN, _Reader, _uuid, interface_name_problem
from .xmlnode import XmlNode, parse, to_text

FORWARD_MODES = ("nat", "route", "open")
BRIDGE_NAME_TEMPLATE = "virbr{}"
DEFAULT_NAT_PORTS = (1024, 65535)


class NetworkXmlError(ConfigError):
    """A network XML document pyhv cannot accept; the message names the file, line and element."""


@dataclass
class DhcpHost:
    """A fixed lease: ``ip`` for the card with ``mac`` (or the client calling itself ``name``)."""

    ip: str
    mac: Optional[str] = None
    name: Optional[str] = None


@dataclass
class NetworkIp:
    """The bridge's own IPv4 address, its subnet, and what DHCP hands out there."""

    address: str
    prefix: int
    netmask_given: bool = False  # written back as netmask='...' (else prefix='...'), as it came
    dhcp_ranges: List[Tuple[str, str]] = field(default_factory=list)
    dhcp_hosts: List[DhcpHost] = field(default_factory=list)
    has_dhcp: bool = False

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.address}/{self.prefix}")

    @property
    def netmask(self) -> str:
        return str(self.interface.network.netmask)


@dataclass
class NetworkConfig:
    name: str
    uuid: str
    bridge: str = ""  # filled in at define time when absent (virbrN)
    stp: bool = True
    delay: int = 0
    mac: str = ""  # the bridge's MAC; generated at define time when absent
    forward: Optional[str] = None  # nat, route, open; None: isolated
    forward_dev: Optional[str] = None  # forward only out of this host interface
    nat_ports: Optional[Tuple[int, int]] = None  # source ports for masqueraded TCP/UDP
    domain_name: Optional[str] = None  # DNS domain dnsmasq answers for
    domain_local_only: bool = False
    dns_enabled: bool = True
    ip: Optional[NetworkIp] = None
    ignored: List[str] = field(default_factory=list)

    @property
    def needs_dnsmasq(self) -> bool:
        """libvirt runs dnsmasq on every network with an address, for DNS, unless DNS is off."""
        return self.ip is not None and (self.dns_enabled or self.ip.has_dhcp)


class _NetworkReader(_Reader):
    error_class = NetworkXmlError
    ignored_elements: Dict[str, str] = {}


def parse_network(text: str, source: str = "network XML") -> NetworkConfig:
    """Read a network document; the uuid is generated when absent."""
    root = parse(text, source)
    r = _NetworkReader(source, False)
    if root.tag != "network":
        raise r.error(root, "the root element must be <network>")
    name = r.text(root, "name")
    if not name:
        raise r.error(root, "<name> is missing")
    if not NAME_PATTERN.match(name):
        raise r.error(root.find("name"), f"'{name}' is not a usable network name (letters, digits, _ . + : -)")
    net = NetworkConfig(name=name, uuid=_uuid(r, root))
    _bridge(r, root, net)
    _mac(r, root, net)
    _forward(r, root, net)
    _domain(r, root, net)
    dns = r.child(root, "dns")
    if dns is not None:
        net.dns_enabled = r.attr(dns, "enable", "yes", ("yes", "no")) == "yes"
        r.finish(dns)
    ips = r.children(root, "ip")
    if len(ips) > 1:
        raise r.error(ips[1], "pyhv gives a network one IPv4 address; this is a second <ip>")
    if ips:
        net.ip = _ip(r, ips[0])
    if net.forward == "nat" and net.ip is None:
        raise r.error(root.find("forward"), "mode='nat' needs an IPv4 <ip> address to masquerade")
    r.finish(root)
    net.ignored = r.notices
    return net


def _bridge(r: _Reader, root: XmlNode, net: NetworkConfig) -> None:
    node = r.child(root, "bridge")
    if node is None:
        return
    net.bridge = r.attr(node, "name") or ""
    problem = interface_name_problem(net.bridge) if net.bridge else None
    if problem:
        raise r.error(node, problem)
    net.stp = r.attr(node, "stp", "on", ("on", "off")) == "on"
    delay = r.attr(node, "delay", "0")
    if not delay.isdigit():
        raise r.error(node, f"delay='{delay}' is not a whole number of seconds")
    net.delay = int(delay)
    r.finish(node)


def _mac(r: _Reader, root: XmlNode, net: NetworkConfig) -> None:
    node = r.child(root, "mac")
    if node is None:
        return
    address = (r.attr(node, "address") or "").lower()
    r.finish(node)
    if not MAC_PATTERN.match(address):
        raise r.error(node, f"'{address}' is not a MAC address")
    if int(address[:2], 16) & 1:
        raise r.error(node, f"'{address}' is a multicast address; a bridge needs a unicast one")
    net.mac = address


def _forward(r: _Reader, root: XmlNode, net: NetworkConfig) -> None:
    node = r.child(root, "forward")
    if node is None:
        return
    mode = r.attr(node, "mode", "nat")
    if mode not in FORWARD_MODES:
        raise r.error(node, f"mode='{mode}' is not supported (supported: {', '.join(FORWARD_MODES)}; "
                            "for an isolated network leave <forward> out)")
    net.forward = mode
    dev = r.attr(node, "dev")
    if dev is not None:
        problem = interface_name_problem(dev)
        if problem:
            raise r.error(node, problem)
        net.forward_dev = dev
    nat = r.child(node, "nat")
    if nat is not None:
        if mode != "nat":
            raise r.error(nat, f"<nat> only applies to mode='nat', not mode='{mode}'")
        port = r.child(nat, "port")
        if port is not None:
            net.nat_ports = _port_range(r, port)
        r.finish(nat)
    r.finish(node)


def _port_range(r: _Reader, node: XmlNode) -> Tuple[int, int]:
    start, end = r.attr(node, "start", ""), r.attr(node, "end", "")
    r.finish(node)
    if not (start.isdigit() and end.isdigit()) or not 0 < int(start) <= int(end) <= 65535:
        raise r.error(node, f"start='{start}' end='{end}' is not a port range within 1-65535")
    return int(start), int(end)


def _domain(r: _Reader, root: XmlNode, net: NetworkConfig) -> None:
    node = r.child(root, "domain")
    if node is None:
        return
    name = r.attr(node, "name") or ""
    if not name or not all(part.replace("-", "").isalnum() for part in name.split(".")):
        raise r.error(node, f"name='{name}' is not a DNS domain name")
    net.domain_name = name
    net.domain_local_only = r.attr(node, "localOnly", "no", ("yes", "no")) == "yes"
    r.finish(node)


def _address(r: _Reader, node: XmlNode, attribute: str) -> ipaddress.IPv4Address:
    text = r.attr(node, attribute) or ""
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise r.error(node, f"{attribute}='{text}' is not an IPv4 address") from None


def _ip(r: _Reader, node: XmlNode) -> NetworkIp:
    family = r.attr(node, "family", "ipv4")
    if family != "ipv4":
        raise r.error(node, f"family='{family}' is not supported: pyhv networks are IPv4 only")
    address = _address(r, node, "address")
    netmask, prefix = r.attr(node, "netmask"), r.attr(node, "prefix")
    if netmask is not None and prefix is not None:
        raise r.error(node, "give netmask or prefix, not both")
    if netmask is not None:
        try:
            bits = ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
        except ValueError:
            raise r.error(node, f"netmask='{netmask}' is not a network mask") from None
    elif prefix is not None:
        if not prefix.isdigit() or not 1 <= int(prefix) <= 30:
            raise r.error(node, f"prefix='{prefix}' is not an IPv4 prefix length pyhv can use (1-30)")
        bits = int(prefix)
    else:
        raise r.error(node, "netmask='...' or prefix='...' is missing")
    if not 1 <= bits <= 30:
        raise r.error(node, f"netmask='{netmask}' leaves no room for hosts or is empty")
    ip = NetworkIp(str(address), bits, netmask is not None)
    subnet = ip.interface.network
    if address in (subnet.network_address, subnet.broadcast_address):
        raise r.error(node, f"{address} is the network or broadcast address of {subnet}, not a host address")
    dhcp = r.child(node, "dhcp")
    if dhcp is not None:
        ip.has_dhcp = True
        _dhcp(r, dhcp, ip, subnet)
    r.finish(node)
    return ip


def _dhcp(r: _Reader, node: XmlNode, ip: NetworkIp, subnet: ipaddress.IPv4Network) -> None:
    for rng in r.children(node, "range"):
        start, end = _address(r, rng, "start"), _address(r, rng, "end")
        r.finish(rng)
        if start not in subnet or end not in subnet:
            raise r.error(rng, f"range {start} - {end} is not entirely within network {subnet}")
        if start > end:
            raise r.error(rng, f"range start {start} comes after its end {end}")
        ip.dhcp_ranges.append((str(start), str(end)))
    for host in r.children(node, "host"):
        address = _address(r, host, "ip")
        mac = r.attr(host, "mac")
        name = r.attr(host, "name")
        r.finish(host)
        if address not in subnet:
            raise r.error(host, f"ip='{address}' is not within network {subnet}")
        if mac is not None and not MAC_PATTERN.match(mac.lower()):
            raise r.error(host, f"mac='{mac}' is not a MAC address")
        if mac is None and name is None:
            raise r.error(host, "a DHCP host needs mac='...' or name='...'")
        if any(h.ip == str(address) for h in ip.dhcp_hosts):
            raise r.error(host, f"ip='{address}' is given to another DHCP host")
        ip.dhcp_hosts.append(DhcpHost(str(address), mac.lower() if mac else None, name))
    r.finish(node)


def network_to_xml(net: NetworkConfig) -> str:
    """The normalized document, in the element order libvirt writes."""
    root = XmlNode("network")
    root.add("name", text=net.name)
    root.add("uuid", text=net.uuid)
    if net.forward is not None:
        forward = root.add("forward", {"mode": net.forward, "dev": net.forward_dev})
        if net.nat_ports is not None:
            nat = forward.add("nat")
            nat.add("port", {"start": str(net.nat_ports[0]), "end": str(net.nat_ports[1])})
    root.add("bridge", {"name": net.bridge or None, "stp": "on" if net.stp else "off", "delay": str(net.delay)})
    if net.mac:
        root.add("mac", {"address": net.mac})
    if net.domain_name:
        root.add("domain", {"name": net.domain_name, "localOnly": "yes" if net.domain_local_only else None})
    if not net.dns_enabled:
        root.add("dns", {"enable": "no"})
    if net.ip is not None:
        ip = net.ip
        attrs = {"address": ip.address}
        attrs.update({"netmask": ip.netmask} if ip.netmask_given else {"prefix": str(ip.prefix)})
        node = root.add("ip", attrs)
        if ip.has_dhcp:
            dhcp = node.add("dhcp")
            for start, end in ip.dhcp_ranges:
                dhcp.add("range", {"start": start, "end": end})
            for host in ip.dhcp_hosts:
                dhcp.add("host", {"mac": host.mac, "name": host.name, "ip": host.ip})
    return to_text(root)


def free_bridge_name(in_use: Callable[[str], bool]) -> str:
    """The first virbrN for which ``in_use`` (another network's bridge, a host interface) is false."""
    index = 0
    while in_use(BRIDGE_NAME_TEMPLATE.format(index)):
        index += 1
    return BRIDGE_NAME_TEMPLATE.format(index)

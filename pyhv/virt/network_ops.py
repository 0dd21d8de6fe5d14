"""Defining, starting and destroying virtual networks, under the store's locks.

Networks live in :meth:`Store.networks` (``CONFIG/networks/NAME.xml``) with the same atomic
writes and locks as domains: the configuration lock serializes define and undefine, the
per-name lock start, destroy and undefine. A started network leaves a status file
``RUNTIME/networks/NAME.xml`` naming what it created (bridge, dnsmasq pid, nftables table),
so that net-destroy removes exactly that. A network is active while that file exists and
its bridge does; a start that fails half-way removes what it had made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from .domain import random_mac
from .network import NetworkConfig, free_bridge_name, network_to_xml, parse_network
from .store import Store, StoreError, fsync_dir, write_atomic
from .xmlnode import XmlNode, parse, to_text
from . import netplumb


@dataclass
class NetworkStatus:
    """What net-start created; read back by net-destroy."""

    bridge: str
    dnsmasq_pid: Optional[int] = None
    nft_table: Optional[str] = None
    live_xml: str = ""


def _missing(key: str) -> StoreError:
    return StoreError(f"failed to get network '{key}': no network with matching name '{key}'")


def load(nstore: Store, name: str) -> NetworkConfig:
    path = nstore.config_path(name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise _missing(name) from None
    return parse_network(text, str(path))


def lookup(nstore: Store, key: str) -> NetworkConfig:
    """A network by name or uuid, as virsh accepts either."""
    if nstore.exists(key):
        return load(nstore, key)
    for name in nstore.names():
        net = load(nstore, name)
        if net.uuid == key.lower():
            return net
    raise _missing(key)


# --- status ----------------------------------------------------------------------------------
def read_status(nstore: Store, name: str) -> Optional[NetworkStatus]:
    path = nstore.runtime_path(name, "xml")
    try:
        root = parse(path.read_text(), str(path))
    except FileNotFoundError:
        return None
    pid = root.attrib.get("dnsmasq", "")
    network = root.find("network")
    return NetworkStatus(root.attrib.get("bridge", ""), int(pid) if pid.isdigit() else None,
                         root.attrib.get("nftables") or None, to_text(network) if network is not None else "")


def _write_status(nstore: Store, name: str, status: NetworkStatus) -> None:
    root = XmlNode("networkstatus", {"bridge": status.bridge})
    if status.nft_table:
        root.attrib["nftables"] = status.nft_table
    if status.dnsmasq_pid:
        root.attrib["dnsmasq"] = str(status.dnsmasq_pid)
    root.children.append(parse(status.live_xml))
    write_atomic(nstore.runtime_path(name, "xml"), to_text(root))


def is_active(nstore: Store, name: str) -> bool:
    status = read_status(nstore, name)
    return status is not None and bool(status.bridge) and netplumb.link_exists(status.bridge)


def _dnsmasq_paths(nstore: Store, name: str) -> Tuple[str, str, str]:
    return (str(nstore.runtime_path(name, "conf")), str(nstore.runtime_path(name, "pid")),
            str(nstore.runtime_path(name, "leases")))


# --- define / undefine -------------------------------------------------------------------------
def define(nstore: Store, text: str, source: str) -> Tuple[NetworkConfig, bool]:
    """Parse, complete (uuid, bridge, MAC) and write a network; True when it is new."""
    net = parse_network(text, source)
    with nstore.config_lock():
        existing: Optional[NetworkConfig] = None
        bridges = {}
        for name in nstore.names():
            other = load(nstore, name)
            if name == net.name:
                existing = other
                continue
            if other.uuid == net.uuid:
                raise StoreError(f"network '{other.name}' already has uuid {net.uuid}")
            bridges[other.bridge] = other.name
        if existing is not None and existing.uuid != net.uuid:
            if "<uuid" in text:
                raise StoreError(f"network '{net.name}' already exists with uuid {existing.uuid}")
            net.uuid = existing.uuid  # a redefinition without a uuid keeps the network's
        if not net.bridge:
            net.bridge = existing.bridge if existing is not None else free_bridge_name(
                lambda b: b in bridges or netplumb.link_exists(b))
        if net.bridge in bridges:
            raise StoreError(f"bridge name '{net.bridge}' is already used by network '{bridges[net.bridge]}'")
        if not net.mac:
            net.mac = existing.mac if existing is not None and existing.mac else random_mac()
        write_atomic(nstore.config_path(net.name), network_to_xml(net))
    return net, existing is None


def undefine(nstore: Store, name: str) -> None:
    with nstore.config_lock(), nstore.domain_lock(name):
        if not nstore.exists(name):
            raise _missing(name)
        if is_active(nstore, name):
            raise StoreError(f"cannot undefine network '{name}': Requested operation is not valid: "
                             "network is still active (net-destroy it first)")
        nstore.set_autostart(name, False)
        nstore.config_path(name).unlink()
        fsync_dir(nstore.config_dir)


# --- start / destroy ---------------------------------------------------------------------------
def start(nstore: Store, name: str) -> NetworkConfig:
    """Create the bridge with its address, forwarding rules and dnsmasq; all or nothing."""
    with nstore.domain_lock(name):
        net = load(nstore, name)
        if is_active(nstore, name):
            raise StoreError(f"failed to start network '{name}': Requested operation is not valid: "
                             "network is already active")
        _teardown(nstore, name, read_status(nstore, name), delete_bridge=False)  # leftovers of a lost run
        if netplumb.link_exists(net.bridge):
            raise StoreError(f"failed to start network '{name}': interface '{net.bridge}' already exists "
                             "on this host (another network or device uses the name)")
        status = NetworkStatus(net.bridge, live_xml=network_to_xml(net))
        undo: List[Callable[[], None]] = []
        try:
            netplumb.create_bridge(net)
            undo.append(lambda: netplumb.delete_link(net.bridge))
            status.nft_table = netplumb.add_forwarding(net)
            undo.append(lambda: netplumb.remove_forwarding(status.nft_table))
            if net.needs_dnsmasq:
                status.dnsmasq_pid = netplumb.start_dnsmasq(net, *_dnsmasq_paths(nstore, name))
                undo.append(lambda: netplumb.stop_process(status.dnsmasq_pid))
            _write_status(nstore, name, status)
        except BaseException:
            for step in reversed(undo):
                step()
            raise
        return net


def destroy(nstore: Store, name: str) -> None:
    with nstore.domain_lock(name):
        load(nstore, name)
        if not is_active(nstore, name):
            raise StoreError(f"failed to destroy network '{name}': Requested operation is not valid: "
                             "network is not active")
        _teardown(nstore, name, read_status(nstore, name), delete_bridge=True)


def _teardown(nstore: Store, name: str, status: Optional[NetworkStatus], delete_bridge: bool) -> None:
    if status is None:
        return
    conf, pid_path, leases = _dnsmasq_paths(nstore, name)
    netplumb.stop_process(netplumb.read_pid(pid_path, "dnsmasq", conf))
    netplumb.remove_forwarding(status.nft_table)
    if delete_bridge and status.bridge:
        netplumb.delete_link(status.bridge)
    for path in (nstore.runtime_path(name, "xml"), conf, pid_path, leases):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def active_bridge(nstore: Store, name: str) -> str:
    """The bridge a domain's ``<source network=NAME/>`` plugs into; an inactive network marked
    autostart is started first (pyhv has no daemon to have started it at boot)."""
    net = load(nstore, name)
    if not is_active(nstore, name):
        if not nstore.autostart(name):
            raise StoreError(f"network '{name}' is not active (start it with: pyhv virsh net-start {name})")
        try:
            start(nstore, name)
        except StoreError:
            if not is_active(nstore, name):  # a concurrent start won the race: that is fine
                raise
    return net.bridge

"""`pyhv virsh net-*`: virsh's network commands and output formats over the store's networks/.

    pyhv virsh net-define FILE | net-undefine NET | net-start NET | net-destroy NET
    pyhv virsh net-list [--all] [--inactive] [--name] | net-info NET | net-dumpxml [--inactive] NET
    pyhv virsh net-autostart [--disable] NET

NET is a network's name or uuid. Messages follow virsh 9.0 (which does not quote network
names in them); errors leave the store unchanged.
"""

from __future__ import annotations

import sys
from typing import Callable, Dict, List

from . import network_ops
from .cli_format import format_table, split_args
from .network import network_to_xml
from .store import Store, StoreError

Handler = Callable[[Store, List[str]], int]


def _name(store: Store, key: str) -> str:
    return network_ops.lookup(store.networks(), key).name


def cmd_net_define(store: Store, args: List[str]) -> int:
    _, (path,) = split_args(args, (), "net-define", 1)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise StoreError(f"Failed to open file '{path}': {err.strerror}") from err
    net, _new = network_ops.define(store.networks(), text, path)
    print(f"Network {net.name} defined from {path}\n")
    return 0


def cmd_net_undefine(store: Store, args: List[str]) -> int:
    _, (key,) = split_args(args, (), "net-undefine", 1)
    name = _name(store, key)
    network_ops.undefine(store.networks(), name)
    print(f"Network {name} has been undefined\n")
    return 0


def cmd_net_start(store: Store, args: List[str]) -> int:
    _, (key,) = split_args(args, (), "net-start", 1)
    name = _name(store, key)
    network_ops.start(store.networks(), name)
    print(f"Network {name} started\n")
    return 0


def cmd_net_destroy(store: Store, args: List[str]) -> int:
    _, (key,) = split_args(args, (), "net-destroy", 1)
    name = _name(store, key)
    network_ops.destroy(store.networks(), name)
    print(f"Network {name} destroyed\n")
    return 0


def cmd_net_list(store: Store, args: List[str]) -> int:
    flags, _ = split_args(args, ("--all", "--inactive", "--name"), "net-list", 0)
    nstore = store.networks()
    rows = [(name, network_ops.is_active(nstore, name)) for name in nstore.names()]
    if "--inactive" in flags:
        rows = [r for r in rows if not r[1]]
    elif "--all" not in flags:
        rows = [r for r in rows if r[1]]
    if "--name" in flags:
        print("".join(f"{name}\n" for name, _ in rows))
        return 0
    table = [[name, "active" if active else "inactive", "yes" if nstore.autostart(name) else "no", "yes"]
             for name, active in rows]
    print(format_table(["Name", "State", "Autostart", "Persistent"], table))
    return 0


def cmd_net_info(store: Store, args: List[str]) -> int:
    _, (key,) = split_args(args, (), "net-info", 1)
    nstore = store.networks()
    net = network_ops.lookup(nstore, key)
    fields = [("Name", net.name), ("UUID", net.uuid),
              ("Active", "yes" if network_ops.is_active(nstore, net.name) else "no"), ("Persistent", "yes"),
              ("Autostart", "yes" if nstore.autostart(net.name) else "no"), ("Bridge", net.bridge)]
    print("".join(f"{label + ':':<16}{value}\n" for label, value in fields))
    return 0


def cmd_net_dumpxml(store: Store, args: List[str]) -> int:
    flags, (key,) = split_args(args, ("--inactive",), "net-dumpxml", 1)
    nstore = store.networks()
    net = network_ops.lookup(nstore, key)
    status = network_ops.read_status(nstore, net.name)
    if "--inactive" not in flags and status is not None and network_ops.is_active(nstore, net.name):
        sys.stdout.write(status.live_xml)  # what runs, even after a redefinition
    else:
        sys.stdout.write(network_to_xml(net))
    return 0


def cmd_net_autostart(store: Store, args: List[str]) -> int:
    flags, (key,) = split_args(args, ("--disable",), "net-autostart", 1)
    nstore = store.networks()
    name = _name(store, key)
    enable = "--disable" not in flags
    with nstore.config_lock():
        if not nstore.exists(name):
            raise StoreError(f"failed to get network '{name}': no network with matching name '{name}'")
        nstore.set_autostart(name, enable)
    print(f"Network {name} {'marked' if enable else 'unmarked'} as autostarted\n")
    return 0


NETWORK_COMMANDS: Dict[str, Handler] = {
    "net-define": cmd_net_define,
    "net-undefine": cmd_net_undefine,
    "net-start": cmd_net_start,
    "net-destroy": cmd_net_destroy,
    "net-list": cmd_net_list,
    "net-info": cmd_net_info,
    "net-dumpxml": cmd_net_dumpxml,
    "net-autostart": cmd_net_autostart,
}

"""`pyhv virsh`: virsh's commands and output formats over pyhv's domain store.

    pyhv virsh [-c pyhv:///system|pyhv:///session] COMMAND [ARGS]

Messages and tables follow virsh 9.0 so that habits and scripts carry over; errors print
``error: ...`` on stderr and exit 1, leaving the store unchanged.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional

from ..errors import PyhvError
from ..qmp.client import QmpClient
from . import lifecycle_ops
from .cli_format import format_table, split_args as _split
from .console import attach
from .domain_xml import domain_to_xml
from .net_virsh import NETWORK_COMMANDS
from .state import DomainStatus, current_status, read_status
from .store import Store, StoreError

Handler = Callable[[Store, List[str]], int]


def _domain_name(store: Store, key: str) -> str:
    return store.lookup(key).name


def _monitor(store: Store, name: str) -> QmpClient:
    if not current_status(store, name).active:
        raise StoreError(f"Requested operation is not valid: domain '{name}' is not running")
    return QmpClient(str(store.runtime_path(name, "monitor")))


def _qmp(store: Store, name: str, command: str) -> None:
    with _monitor(store, name) as client:
        client.execute(command)


def cmd_define(store: Store, args: List[str]) -> int:
    flags, (path,) = _split(args, ("--ignore-unsupported",), "define", 1)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise StoreError(f"failed to read file '{path}': {err.strerror}") from err
    dom, _new = store.define(text, path, "--ignore-unsupported" in flags)
    for notice in dom.ignored:
        print(f"warning: {path}: {notice}", file=sys.stderr)
    print(f"Domain '{dom.name}' defined from {path}\n")
    return 0


def cmd_undefine(store: Store, args: List[str]) -> int:
    _, (key,) = _split(args, (), "undefine", 1)
    name = _domain_name(store, key)
    store.undefine(name, lambda n: lifecycle_ops.is_running(store, n))
    print(f"Domain '{name}' has been undefined\n")
    return 0


def cmd_start(store: Store, args: List[str]) -> int:
    flags, (key,) = _split(args, ("--console",), "start", 1)
    name = _domain_name(store, key)
    lifecycle_ops.start(store, name)
    print(f"Domain '{name}' started\n", flush=True)
    if "--console" in flags:
        return attach(str(store.runtime_path(name, "console")), name)
    return 0


def _simple(command: str, qmp: str, message: str) -> Handler:
    def handler(store: Store, args: List[str]) -> int:
        _, (key,) = _split(args, (), command, 1)
        name = _domain_name(store, key)
        _qmp(store, name, qmp)
        print(message.format(name=name) + "\n")
        return 0
    return handler


def cmd_destroy(store: Store, args: List[str]) -> int:
    _, (key,) = _split(args, ("--graceful",), "destroy", 1)
    name = _domain_name(store, key)
    lifecycle_ops.destroy(store, name)
    print(f"Domain '{name}' destroyed\n")
    return 0


def _all_statuses(store: Store) -> List[tuple]:
    rows = [(name, current_status(store, name)) for name in store.names()]
    active = sorted((r for r in rows if r[1].active), key=lambda r: r[1].id or 0)
    inactive = [r for r in rows if not r[1].active]
    return active + inactive


def cmd_list(store: Store, args: List[str]) -> int:
    flags, _ = _split(args, ("--all", "--name", "--inactive"), "list", 0)
    rows = _all_statuses(store)
    if "--inactive" in flags:
        rows = [r for r in rows if not r[1].active]
    elif "--all" not in flags:
        rows = [r for r in rows if r[1].active]
    if "--name" in flags:
        print("".join(f"{name}\n" for name, _ in rows))
        return 0
    table = [[str(s.id) if s.active and s.id is not None else "-", name, s.state_name] for name, s in rows]
    print(format_table(["Id", "Name", "State"], table))
    return 0


def cmd_dominfo(store: Store, args: List[str]) -> int:
    _, (key,) = _split(args, (), "dominfo", 1)
    dom = store.lookup(key)
    status = current_status(store, dom.name)
    fields = [
        ("Id", str(status.id) if status.active and status.id is not None else "-"),
        ("Name", dom.name), ("UUID", dom.uuid), ("OS Type", "hvm"), ("State", status.state_name),
        ("CPU(s)", str(dom.vcpus)), ("Max memory", f"{dom.memory_kib} KiB"),
        ("Used memory", f"{dom.memory_kib if status.active else dom.current_memory_kib} KiB"),
        ("Persistent", "yes"), ("Autostart", "enable" if store.autostart(dom.name) else "disable"),
        ("Managed save", "no"), ("Security model", "none"), ("Security DOI", "0"),
    ]
    print("".join(f"{label + ':':<16}{value}\n" for label, value in fields))
    return 0


def cmd_domstate(store: Store, args: List[str]) -> int:
    flags, (key,) = _split(args, ("--reason",), "domstate", 1)
    status = current_status(store, _domain_name(store, key))
    print(status.state_name + (f" ({status.reason})" if "--reason" in flags else "") + "\n")
    return 0


def cmd_dumpxml(store: Store, args: List[str]) -> int:
    flags, (key,) = _split(args, ("--inactive",), "dumpxml", 1)
    dom = store.lookup(key)
    status: DomainStatus = current_status(store, dom.name)
    if status.active and status.live_xml and "--inactive" not in flags:
        sys.stdout.write(status.live_xml)
    else:
        sys.stdout.write(domain_to_xml(dom))
    return 0


def cmd_edit(store: Store, args: List[str]) -> int:
    _, (key,) = _split(args, (), "edit", 1)
    dom = store.lookup(key)
    original = domain_to_xml(dom)
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix=f"{dom.name}-", delete=False) as f:
        f.write(original)
        path = f.name
    try:
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        if subprocess.call(shlex.split(editor) + [path]) != 0:
            raise StoreError(f"editor '{editor}' failed; domain '{dom.name}' unchanged")
        with open(path) as f:
            edited = f.read()
        if edited == original:
            print(f"Domain '{dom.name}' XML configuration not changed.\n")
            return 0
        new, _ = store.define(edited, path)
        print(f"Domain '{new.name}' XML configuration edited.\n")
        return 0
    finally:
        os.unlink(path)


def cmd_console(store: Store, args: List[str]) -> int:
    _, (key,) = _split(args, ("--force",), "console", 1)
    name = _domain_name(store, key)
    if not current_status(store, name).active:
        raise StoreError(f"Requested operation is not valid: domain '{name}' is not running")
    status = read_status(store, name)
    path = str(store.runtime_path(name, "console"))
    if status.live_xml and "<source mode='bind' path='" in status.live_xml:
        path = status.live_xml.split("<source mode='bind' path='", 1)[1].split("'", 1)[0]
    return attach(path, name)


def cmd_autostart(store: Store, args: List[str]) -> int:
    flags, (key,) = _split(args, ("--disable",), "autostart", 1)
    name = _domain_name(store, key)
    with store.config_lock():
        enable = "--disable" not in flags
        store.set_autostart(name, enable)
    print(f"Domain '{name}' {'marked' if enable else 'unmarked'} as autostarted\n")
    return 0


def cmd_qemu_monitor_command(store: Store, args: List[str]) -> int:
    flags = {a for a in args if a in ("--hmp", "--pretty")}
    rest = [a for a in args if a not in flags]
    if len(rest) < 2:
        raise StoreError("command 'qemu-monitor-command' needs a domain and a command")
    name = _domain_name(store, rest[0])
    text = " ".join(rest[1:])
    with _monitor(store, name) as client:
        if "--hmp" in flags:
            print(client.execute("human-monitor-command", {"command-line": text}), end="")
            return 0
        try:
            request = json.loads(text)
        except ValueError as err:
            raise StoreError(f"qemu-monitor-command: not a JSON QMP command: {err}") from err
        reply = client.call(request)
    print(json.dumps(reply, indent=2 if "--pretty" in flags else None))
    return 1 if "error" in reply else 0


COMMANDS: Dict[str, Handler] = {
    "define": cmd_define,
    "undefine": cmd_undefine,
    "start": cmd_start,
    "shutdown": _simple("shutdown", "system_powerdown", "Domain '{name}' is being shutdown"),
    "destroy": cmd_destroy,
    # As libvirt's default (ACPI) mode: the guest shuts down and is started again.
    "reboot": _simple("reboot", "x-guest-reboot", "Domain '{name}' is being rebooted"),
    "reset": _simple("reset", "system_reset", "Domain '{name}' was reset"),
    "suspend": _simple("suspend", "stop", "Domain '{name}' suspended"),
    "resume": _simple("resume", "cont", "Domain '{name}' resumed"),
    "list": cmd_list,
    "dominfo": cmd_dominfo,
    "domstate": cmd_domstate,
    "dumpxml": cmd_dumpxml,
    "edit": cmd_edit,
    "console": cmd_console,
    "autostart": cmd_autostart,
    "qemu-monitor-command": cmd_qemu_monitor_command,
}
COMMANDS.update(NETWORK_COMMANDS)

USAGE = "usage: pyhv virsh [-c pyhv:///system|pyhv:///session] COMMAND [ARGS]\n\ncommands: " + \
    ", ".join(COMMANDS) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    uri = None
    while args and args[0] in ("-c", "--connect") or args and args[0].startswith("--connect="):
        if "=" in args[0]:
            uri = args.pop(0).split("=", 1)[1]
        elif len(args) < 2:
            print("error: -c needs a URI", file=sys.stderr)
            return 1
        else:
            uri = args[1]
            del args[:2]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 1
    handler = COMMANDS.get(args[0])
    if handler is None:
        print(f"error: unknown command: '{args[0]}'", file=sys.stderr)
        return 1
    try:
        return handler(Store.open(uri), args[1:])
    except PyhvError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

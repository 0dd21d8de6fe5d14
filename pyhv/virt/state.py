"""Runtime state of a domain: the status file its VM process keeps, and whether it still lives.

The status file (``RUNTIME/NAME.xml``) holds libvirt's ``<domstatus state reason pid id>``
around the live domain XML. The VM process writes it on start, pause, resume and a clean
exit; a process that died without writing (killed, crashed) still says ``running``, so a
reader checks the pid, and :func:`settle` records ``shut off (crashed)`` under the domain lock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .store import Store, write_atomic
from .xmlnode import XmlNode, parse, to_text

RUNNER_MODULE = "pyhv.virt.runner"
# virsh's words for each state.
STATE_NAMES = {"running": "running", "paused": "paused", "shutoff": "shut off"}


@dataclass
class DomainStatus:
    state: str = "shutoff"  # running, paused, shutoff
    reason: str = "unknown"
    pid: Optional[int] = None
    id: Optional[int] = None
    live_xml: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.state in ("running", "paused")

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]


def read_status(store: Store, name: str) -> DomainStatus:
    try:
        text = store.runtime_path(name, "xml").read_text()
    except FileNotFoundError:
        return DomainStatus()
    root = parse(text, str(store.runtime_path(name, "xml")))
    status = DomainStatus(root.attrib.get("state", "shutoff"), root.attrib.get("reason", "unknown"))
    if root.attrib.get("pid", "").isdigit():
        status.pid = int(root.attrib["pid"])
    if root.attrib.get("id", "").isdigit():
        status.id = int(root.attrib["id"])
    domain = root.find("domain")
    if domain is not None:
        status.live_xml = to_text(domain)
    return status


def write_status(store: Store, name: str, status: DomainStatus) -> None:
    root = XmlNode("domstatus", {"state": status.state, "reason": status.reason})
    if status.pid is not None:
        root.attrib["pid"] = str(status.pid)
    if status.id is not None:
        root.attrib["id"] = str(status.id)
    if status.live_xml:
        root.children.append(parse(status.live_xml))
    write_atomic(store.runtime_path(name, "xml"), to_text(root))


def process_alive(pid: Optional[int], name: str) -> bool:
    """True if ``pid`` is this domain's VM process (not a reused pid, not a zombie)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return RUNNER_MODULE.encode() in argv and name.encode() in argv


def current_status(store: Store, name: str) -> DomainStatus:
    """The status as it is now: an active status whose process is gone reads as crashed."""
    status = read_status(store, name)
    if status.active and not process_alive(status.pid, name):
        return DomainStatus("shutoff", "crashed")
    return status


def settle(store: Store, name: str) -> DomainStatus:
    """:func:`current_status`, and record a crash found; call with the domain lock held."""
    status = read_status(store, name)
    if status.active and not process_alive(status.pid, name):
        status = DomainStatus("shutoff", "crashed")
        write_status(store, name, status)
        cleanup_runtime(store, name)
    return status


def cleanup_runtime(store: Store, name: str) -> None:
    for kind in ("pid", "monitor", "console"):
        try:
            os.unlink(store.runtime_path(name, kind))
        except FileNotFoundError:
            pass

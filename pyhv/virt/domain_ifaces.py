"""The host ends of a running domain's ``<interface>`` elements, held by its VM process.

As libvirt does it:

- ``ethernet``: a TAP device named by ``<target dev>``, else the kernel's next ``vnetN``;
- ``bridge``: such a TAP device added to an existing bridge;
- ``network``: the same on the bridge of a pyhv virtual network (started if it is marked
  autostart, as libvirtd would have at boot);
- ``user``: a ``passt`` process, reached through ``-netdev stream`` on its unix socket.

The VM process creates each TAP device itself (owned by its uid and gid), gives it the
guest's MAC with ``fe`` first, brings it up and keeps its descriptor for the domain's
lifetime, so the device vanishes when the process ends however it ends. Each machine
(re)build gets duplicates of those descriptors, because a machine closes its back-ends.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import time
from typing import List, Optional

from .domain import DomainConfig, Interface
from .netplumb import NetPlumbError, TapDevice, create_tap, link_details, link_exists, plug_tap
from .store import Store

AUTO_TAP_NAME = "vnet%d"
PASST_START_TIMEOUT_S = 10.0
POLL_S = 0.02


def netdev_id(index: int) -> str:
    """libvirt's name for the back-end of the index-th interface."""
    return f"hostnet{index}"


def require_passt() -> str:
    path = shutil.which("passt")
    if path is None:
        raise NetPlumbError("<interface type='user'> needs passt for user-mode networking, which is not "
                            "installed (Debian package 'passt')")
    return path


class _Passt:
    """One passt process serving a unix socket."""

    def __init__(self, socket_path: str, log_path: str) -> None:
        self.socket_path = socket_path
        if os.path.exists(socket_path):
            os.unlink(socket_path)  # left by a VM process that was killed
        # passt runs as the VM process's user, as libvirt runs it as QEMU's: left to itself, root's
        # passt turns into nobody before binding its socket, and nobody may not write the runtime
        # directory. passt still isolates itself (namespaces, seccomp) either way.
        argv = [require_passt(), "--foreground", "--stderr", "--runas", f"{os.geteuid()}:{os.getegid()}",
                "--socket", socket_path]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            close_fds=True)
        deadline = time.monotonic() + PASST_START_TIMEOUT_S
        while not os.path.exists(socket_path):
            if self.process.poll() is not None:
                self.close()
                raise NetPlumbError(f"passt exited at start: {_last_line(log_path)} (log: {log_path})")
            if time.monotonic() > deadline:
                self.close()
                raise NetPlumbError(f"passt made no socket {socket_path} within {PASST_START_TIMEOUT_S:.0f} s "
                                    f"(log: {log_path})")
            time.sleep(POLL_S)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = [line for line in f.read().decode(errors="replace").splitlines()
                     if line.strip() and "syslog" not in line]
    except OSError:
        lines = []
    return lines[-1] if lines else "it exited without a message"


class DomainInterfaces:
    """TAP devices and passt processes, one per interface, in the domain's order."""

    def __init__(self) -> None:
        self.taps: List[Optional[TapDevice]] = []
        self.passts: List[Optional[_Passt]] = []

    @classmethod
    def open(cls, store: Store, dom: DomainConfig) -> "DomainInterfaces":
        """Create every interface's host end; on any failure, remove those already made."""
        ifaces = cls()
        try:
            for index, iface in enumerate(dom.interfaces):
                ifaces._open_one(store, dom, index, iface)
        except BaseException:
            ifaces.close()
            raise
        return ifaces

    def _open_one(self, store: Store, dom: DomainConfig, index: int, iface: Interface) -> None:
        if iface.type == "user":
            base = store.runtime_path(dom.name, f"passt{index}")
            self.taps.append(None)
            self.passts.append(_Passt(f"{base}.socket", f"{base}.log"))
            return
        bridge = None
        if iface.type == "bridge":
            bridge = iface.source
            if not link_exists(bridge):
                raise NetPlumbError(f"<interface type='bridge'> ({iface.mac}): bridge '{bridge}' does not exist")
        elif iface.type == "network":
            from . import network_ops

            bridge = network_ops.active_bridge(store.networks(), iface.source)
        name = iface.target_dev or AUTO_TAP_NAME
        if iface.target_dev and link_exists(name):
            kind = (link_details(name).get("linkinfo") or {}).get("info_kind")  # type: ignore[union-attr]
            if kind != "tun":
                raise NetPlumbError(f"<target dev='{name}'>: interface '{name}' exists and is not a TAP device")
        tap = create_tap(name, os.geteuid(), os.getegid())
        self.taps.append(tap)
        self.passts.append(None)
        plug_tap(tap, iface.mac, bridge)

    def netdevs(self) -> List[str]:
        """``-netdev`` texts for one machine build (fresh descriptors: the machine closes them)."""
        texts = []
        for index, (tap, passt) in enumerate(zip(self.taps, self.passts)):
            if tap is not None:
                texts.append(f"tap,id={netdev_id(index)},fd={os.dup(tap.fd)}")
            else:
                assert passt is not None
                texts.append(f"stream,id={netdev_id(index)},addr.type=unix,addr.path={passt.socket_path}")
        return texts

    def live_domain(self, dom: DomainConfig) -> DomainConfig:
        """``dom`` as it runs: each TAP interface's ``<target dev>`` is the device's actual name."""
        live = copy.deepcopy(dom)
        for iface, tap in zip(live.interfaces, self.taps):
            if tap is not None:
                iface.target_dev = tap.name
        return live

    def tap_names(self) -> List[str]:
        return [tap.name for tap in self.taps if tap is not None]

    def close(self) -> None:
        for tap in self.taps:
            if tap is not None:
                tap.close()
        for passt in self.passts:
            if passt is not None:
                passt.close()
        self.taps, self.passts = [], []

"""A TAP interface (``/dev/net/tun``, IFF_TAP | IFF_NO_PI): each read or write is one frame.

No IFF_VNET_HDR: virtio-net here negotiates no offloads, so frames cross as plain Ethernet.
``-netdev tap,id=ID,ifname=NAME,script=no,downscript=no`` opens (or creates) interface
NAME; ``fd=N`` adopts a TAP descriptor someone else opened (libvirt does that). pyhv runs
no ifup scripts: configure the interface yourself, or let libvirt do it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Dict, List, Optional, Tuple

from .backend import MAX_FRAME_SIZE, NetBackend, NetdevError, NetdevSpec

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16


def open_tap_fd(ifname: str) -> Tuple[int, str]:
    """Open ``/dev/net/tun`` and create or attach to TAP interface ``ifname`` (the kernel names
    it if empty; ``%d`` in it lets the kernel pick a number): (descriptor, actual name)."""
    if len(ifname.encode()) >= IFNAMSIZ:
        raise NetdevError(f"tap: interface name '{ifname}' is longer than {IFNAMSIZ - 1} bytes")
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise NetdevError(f"tap: cannot open {TUN_DEVICE}: {err.strerror}") from err
    request = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
    try:
        answer = fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as err:
        os.close(fd)
        hint = " (creating a TAP interface needs CAP_NET_ADMIN)" if err.errno == errno.EPERM else ""
        raise NetdevError(f"tap: cannot attach to interface '{ifname}': {err.strerror}{hint}") from err
    return fd, answer[:IFNAMSIZ].split(b"\0", 1)[0].decode()


class TapBackend(NetBackend):
    name = "tap"

    def __init__(self, fd: int, ifname: str) -> None:
        super().__init__()
        self.fd = fd
        self.ifname = ifname

    @classmethod
    def open(cls, ifname: str = "") -> "TapBackend":
        """Create or attach to TAP interface ``ifname`` (the kernel names it if empty)."""
        return cls(*open_tap_fd(ifname))

    def fileno(self) -> int:
        return self.fd

    def receive_frames(self) -> Optional[List[bytes]]:
        try:
            frame = os.read(self.fd, MAX_FRAME_SIZE)
        except BlockingIOError:
            return []
        except OSError as err:
            if err.errno == errno.EIO:
                return []  # the interface is down: it delivers nothing, but it may come up
            raise
        return [frame] if frame else None

    def send(self, frame: bytes) -> None:
        try:
            os.write(self.fd, frame)
            self.sent_frames += 1
        except OSError:
            # The interface is down or its queue is full: a wire would drop the frame too.
            self.dropped_frames += 1

    def close_backend(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_tap(spec: NetdevSpec, props: Dict[str, str]) -> TapBackend:
    """The ``-netdev tap`` opener; consumes the properties it understands from ``props``."""
    for key in ("script", "downscript"):
        value = props.pop(key, "no")
        if value not in ("no", ""):
            raise NetdevError(f"-netdev {spec.text}: {key}={value}: pyhv runs no interface scripts; "
                              f"use {key}=no and configure the interface yourself")
    if props.pop("vhost", "off") not in ("off", "no"):
        raise NetdevError(f"-netdev {spec.text}: vhost is not supported")
    fd_text = props.pop("fd", "")
    ifname = props.pop("ifname", "")
    if fd_text:
        try:
            fd = int(fd_text)
            os.fstat(fd)
        except (ValueError, OSError) as err:
            raise NetdevError(f"-netdev {spec.text}: fd={fd_text} is not an open descriptor") from err
        return TapBackend(fd, ifname)
    return TapBackend.open(ifname)

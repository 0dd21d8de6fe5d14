"""A TAP interface (``/dev/net/tun``, IFF_TAP | IFF_NO_PI): each read or write is one frame.

``-netdev tap,id=ID,ifname=NAME,script=no,downscript=no`` opens (or creates) interface
NAME; ``fd=N`` adopts a TAP descriptor someone else opened (libvirt does that). pyhv runs
no ifup scripts: configure the interface yourself, or let libvirt do it.

With IFF_VNET_HDR (``vnet_hdr=on``, the default where the kernel has it, as in QEMU) every
frame crosses with a 12-byte virtio_net_hdr in front: the guest's checksum and segmentation
requests go to the host kernel as they are, and the kernel hands over unchecksummed packets
and 64 KiB TCP segments, but only those kinds that :meth:`TapBackend.set_offloads` allowed.
A descriptor passed with ``fd=`` is asked (TUNGETIFF) whether its opener turned the header on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Dict, List, Optional, Sequence, Tuple

from ..chardev import parse_on_off
from .backend import (MAX_FRAME_SIZE, VNET_HEADER_SIZE, BytesLike, NetBackend, NetdevError, NetdevSpec,
                      Offloads, log)

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
IFNAMSIZ = 16
IFREQ = struct.Struct("16sH22x")  # struct ifreq: the name, then ifr_flags in the union
# Linux refuses writev with more parts; a longer chain is joined into one buffer first.
MAX_WRITE_PARTS = 1024
_writev = getattr(os, "writev", None)  # PyPy 3.9 has none


def _open_tun_device() -> int:
    try:
        return os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise NetdevError(f"tap: cannot open {TUN_DEVICE}: {err.strerror}") from err


def kernel_has_vnet_header() -> bool:
    """Whether this kernel's TUN/TAP driver knows IFF_VNET_HDR (TUNGETFEATURES)."""
    fd = _open_tun_device()
    try:
        (features,) = struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, bytes(4)))
        return bool(features & IFF_VNET_HDR)
    except OSError:
        return False  # a kernel older than TUNGETFEATURES has no vnet header either
    finally:
        os.close(fd)


def open_tap_fd(ifname: str, vnet_header: bool = False) -> Tuple[int, str]:
    """Open ``/dev/net/tun`` and create or attach to TAP interface ``ifname`` (the kernel names
    it if empty; ``%d`` in it lets the kernel pick a number), with IFF_VNET_HDR if asked:
    (descriptor, actual name)."""
    if len(ifname.encode()) >= IFNAMSIZ:
        raise NetdevError(f"tap: interface name '{ifname}' is longer than {IFNAMSIZ - 1} bytes")
    fd = _open_tun_device()
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_header else 0)
    try:
        answer = fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(ifname.encode(), flags))
    except OSError as err:
        os.close(fd)
        hint = " (creating a TAP interface needs CAP_NET_ADMIN)" if err.errno == errno.EPERM else ""
        raise NetdevError(f"tap: cannot attach to interface '{ifname}': {err.strerror}{hint}") from err
    return fd, answer[:IFNAMSIZ].split(b"\0", 1)[0].decode()


def tap_descriptor_flags(fd: int) -> Tuple[str, int]:
    """(interface name, IFF_* flags) of an attached TUN/TAP descriptor (TUNGETIFF)."""
    name, flags = IFREQ.unpack(fcntl.ioctl(fd, TUNGETIFF, bytes(IFREQ.size)))
    return name.split(b"\0", 1)[0].decode(), flags


def tun_offload_flags(offloads: Offloads) -> int:
    return ((TUN_F_CSUM if offloads.csum else 0) | (TUN_F_TSO4 if offloads.tso4 else 0)
            | (TUN_F_TSO6 if offloads.tso6 else 0) | (TUN_F_TSO_ECN if offloads.tso_ecn else 0))


class TapBackend(NetBackend):
    name = "tap"

    def __init__(self, fd: int, ifname: str, vnet_header: bool = False) -> None:
        """``vnet_header``: ``fd`` was attached with IFF_VNET_HDR; its header size becomes 12
        bytes (what a VERSION_1 virtio-net device frames) and its offloads none, until
        :meth:`set_offloads`."""
        super().__init__()
        self.fd = fd
        self.ifname = ifname
        self.vnet_header = vnet_header
        if vnet_header:
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HEADER_SIZE))
                fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
            except OSError as err:
                raise NetdevError(f"tap: cannot set up the virtio-net header of '{ifname}': {err.strerror}") \
                    from err

    @classmethod
    def open(cls, ifname: str = "", vnet_header: bool = False) -> "TapBackend":
        """Create or attach to TAP interface ``ifname`` (the kernel names it if empty)."""
        fd, actual = open_tap_fd(ifname, vnet_header)
        try:
            return cls(fd, actual, vnet_header)
        except NetdevError:
            os.close(fd)
            raise

    def fileno(self) -> int:
        return self.fd

    def receive_frames(self) -> Optional[List[bytes]]:
        try:
            frame = os.read(self.fd, MAX_FRAME_SIZE + (VNET_HEADER_SIZE if self.vnet_header else 0))
        except BlockingIOError:
            return []
        except OSError as err:
            if err.errno == errno.EIO:
                return []  # the interface is down: it delivers nothing, but it may come up
            raise
        return [frame] if frame else None

    def send(self, frame: bytes) -> None:
        self.send_parts([frame])

    def send_parts(self, parts: Sequence[BytesLike]) -> bool:
        try:
            if _writev is not None and len(parts) <= MAX_WRITE_PARTS:
                _writev(self.fd, parts)  # straight from guest memory
            else:
                os.write(self.fd, b"".join(parts))
            self.sent_frames += 1
        except OSError as err:
            if err.errno == errno.EINVAL and self.vnet_header:
                return False  # the kernel's checks of the virtio_net_hdr refused it
            # The interface is down or its queue is full: a wire would drop the frame too.
            self.dropped_frames += 1
        return True

    def set_offloads(self, offloads: Offloads) -> None:
        if not self.vnet_header:
            return
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, tun_offload_flags(offloads))
        except OSError as err:
            # The kernel keeps the offloads it had; the device drops what its driver cannot take.
            log.warning("tap %s: cannot set offloads %s: %s", self.ifname, offloads, err.strerror)

    def close_backend(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _adopt_descriptor(spec: NetdevSpec, fd_text: str, ifname: str) -> TapBackend:
    try:
        fd = int(fd_text)
        os.fstat(fd)
    except (ValueError, OSError) as err:
        raise NetdevError(f"-netdev {spec.text}: fd={fd_text} is not an open descriptor") from err
    try:
        actual, flags = tap_descriptor_flags(fd)
    except OSError as err:
        raise NetdevError(f"-netdev {spec.text}: fd={fd_text} is not an attached TAP descriptor "
                          f"(TUNGETIFF: {err.strerror})") from err
    if flags & (IFF_TAP | IFF_NO_PI) != IFF_TAP | IFF_NO_PI:
        raise NetdevError(f"-netdev {spec.text}: fd={fd_text} is not a TAP descriptor opened with "
                          f"IFF_TAP | IFF_NO_PI (flags {flags:#x})")
    return TapBackend(fd, ifname or actual, bool(flags & IFF_VNET_HDR))


def open_tap(spec: NetdevSpec, props: Dict[str, str]) -> TapBackend:
    """The ``-netdev tap`` opener; consumes the properties it understands from ``props``."""
    for key in ("script", "downscript"):
        value = props.pop(key, "no")
        if value not in ("no", ""):
            raise NetdevError(f"-netdev {spec.text}: {key}={value}: pyhv runs no interface scripts; "
                              f"use {key}=no and configure the interface yourself")
    if props.pop("vhost", "off") not in ("off", "no"):
        raise NetdevError(f"-netdev {spec.text}: vhost is not supported")
    vnet_hdr_text = props.pop("vnet_hdr", None)
    fd_text = props.pop("fd", "")
    ifname = props.pop("ifname", "")
    if fd_text:
        if vnet_hdr_text is not None:
            raise NetdevError(f"-netdev {spec.text}: vnet_hdr= is invalid with fd=; pyhv asks the "
                              f"descriptor whether it carries the header")
        return _adopt_descriptor(spec, fd_text, ifname)
    required = vnet_hdr_text is not None and parse_on_off(f"-netdev {spec.text}", "vnet_hdr", vnet_hdr_text)
    vnet_header = vnet_hdr_text is None or required
    if vnet_header and not kernel_has_vnet_header():
        if required:
            raise NetdevError(f"-netdev {spec.text}: vnet_hdr=on, but this kernel's TAP driver has no IFF_VNET_HDR")
        vnet_header = False  # QEMU's default too: the header where the kernel has it
    return TapBackend.open(ifname, vnet_header)

"""The host end of a guest network card, and QEMU's ``-netdev`` option.

A back-end takes whole Ethernet frames from the device (:meth:`NetBackend.send`) and
delivers the frames it receives to the device's receiver from its own reader thread, which
waits on the back-end's descriptor and on a wake-up pipe so :meth:`NetBackend.close` can
stop it. Back-ends: ``tap.py`` (a kernel TAP interface), ``socket.py`` (QEMU's ``stream``
and ``dgram``, which passt and other user-mode helpers speak).
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

from ..errors import ConfigError

log = logging.getLogger("pyhv.net")

Receiver = Callable[[bytes], None]
BytesLike = Union[bytes, bytearray, memoryview]

# struct virtio_net_hdr as VERSION_1 devices frame it (with num_buffers), the header that a
# back-end with ``vnet_header`` puts in front of every frame in both directions.
VNET_HEADER_SIZE = 12

# The largest frame any back-end reads or sends: a 64 KiB IP packet with its Ethernet header
# and a VLAN tag fits.
MAX_FRAME_SIZE = 65536 + 18


class NetdevError(ConfigError):
    """A ``-netdev`` option is wrong, or its back-end cannot be opened."""


class NetdevSpec(NamedTuple):
    """One parsed ``-netdev TYPE,id=ID,key=value,...``."""

    kind: str
    id: str
    props: Dict[str, str]
    text: str  # the option as given, for messages


def parse_netdev(text: str) -> NetdevSpec:
    parts = text.split(",")
    kind = parts[0].strip()
    props: Dict[str, str] = {}
    for part in parts[1:]:
        if not part:
            continue
        key, sep, value = part.partition("=")
        props[key.strip()] = value.strip() if sep else "on"
    netdev_id = props.pop("id", "")
    if not kind:
        raise NetdevError(f"-netdev {text}: missing the back-end type (tap, stream, dgram)")
    if not netdev_id:
        raise NetdevError(f"-netdev {text}: missing id=")
    return NetdevSpec(kind, netdev_id, props, text)


def open_netdev(spec: NetdevSpec) -> "NetBackend":
    """Open the back-end ``spec`` names (nothing runs until :meth:`NetBackend.start`)."""
    from . import socket as socket_backends
    from . import tap

    openers = {"tap": tap.open_tap, "stream": socket_backends.open_stream, "dgram": socket_backends.open_dgram}
    opener = openers.get(spec.kind)
    if opener is None:
        hint = " (for user-mode networking run passt and use -netdev stream)" if spec.kind == "user" else ""
        raise NetdevError(f"-netdev {spec.text}: unsupported back-end '{spec.kind}'{hint}; "
                          f"pyhv has {', '.join(sorted(openers))}")
    props = dict(spec.props)
    backend = opener(spec, props)
    if props:
        backend.close()
        raise NetdevError(f"-netdev {spec.text}: unsupported property '{next(iter(props))}'")
    return backend


class Offloads(NamedTuple):
    """What a receiver accepts in the packets it is handed: partial checksums, TCP segments
    larger than the MTU (IPv4, IPv6) and such segments carrying the ECN CWR flag."""

    csum: bool = False
    tso4: bool = False
    tso6: bool = False
    tso_ecn: bool = False


NO_OFFLOADS = Offloads()


class NetBackend:
    """Base of the back-ends: the reader thread and its shutdown.

    With ``vnet_header`` every frame, sent or received, starts with a VNET_HEADER_SIZE-byte
    virtio_net_hdr that asks for (or reports) checksum and segmentation offloads; without it
    frames are plain Ethernet and no offload can be offered to a guest."""

    name = "net"
    vnet_header = False

    def __init__(self) -> None:
        self._receiver: Optional[Receiver] = None
        self._thread: Optional[threading.Thread] = None
        self._wake_read, self._wake_write = os.pipe()
        self._closed = False
        self.sent_frames = 0
        self.received_frames = 0
        self.dropped_frames = 0  # frames the host side refused or that were too long

    # --- for subclasses -----------------------------------------------------------------------
    def fileno(self) -> int:
        """The descriptor the reader thread waits on."""
        raise NotImplementedError

    def receive_frames(self) -> Optional[List[bytes]]:
        """Read what is ready; the whole frames it completed, or None at end of file."""
        raise NotImplementedError

    def send(self, frame: bytes) -> None:
        raise NotImplementedError

    def send_parts(self, parts: Sequence[BytesLike]) -> bool:
        """Send the concatenation of ``parts`` as one frame; False when the host refused its
        virtio_net_hdr (only back-ends with ``vnet_header`` check one)."""
        self.send(b"".join(parts))
        return True

    def set_offloads(self, offloads: Offloads) -> None:
        """Limit the offloads in received frames to ``offloads`` (back-ends with ``vnet_header``)."""

    def close_backend(self) -> None:
        """Close the back-end's own descriptors."""

    # --- the reader thread ------------------------------------------------------------------------
    def start(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._thread = threading.Thread(target=self._run, name=f"pyhv-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                ready, _, _ = select.select([self.fileno(), self._wake_read], [], [])
            except (OSError, ValueError):
                return  # closed under us
            if self._wake_read in ready or self._closed:
                return
            try:
                frames = self.receive_frames()
            except OSError as err:
                log.warning("%s: receive failed: %s; no more frames for the guest", self.name, err)
                return
            if frames is None:
                log.info("%s: the peer closed the connection", self.name)
                return
            for frame in frames:
                self.received_frames += 1
                assert self._receiver is not None
                self._receiver(frame)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_write, b"x")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.close_backend()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def __enter__(self) -> "NetBackend":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

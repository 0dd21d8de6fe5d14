"""QEMU's socket back-ends: ``-netdev stream`` and ``-netdev dgram``.

``stream`` carries frames over a byte stream (a unix or TCP socket), each preceded by its
length as a 4-byte big-endian integer; that is what passt speaks to QEMU. With server=on the
back-end listens and serves one peer at a time; otherwise it connects at start-up.
``dgram`` sends each frame as one datagram to ``remote`` and receives on ``local``.

    -netdev stream,id=n0,addr.type=unix,addr.path=/tmp/passt.sock
    -netdev stream,id=n0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port=5555
    -netdev dgram,id=n0,local.type=unix,local.path=A,remote.type=unix,remote.path=B
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Dict, List, Optional, Tuple, Union

from ..chardev import parse_on_off
from .backend import MAX_FRAME_SIZE, NetBackend, NetdevError, NetdevSpec, log

LENGTH_PREFIX = struct.Struct(">I")
Address = Union[str, Tuple[str, int]]


class StreamBackend(NetBackend):
    """Length-prefixed frames on a connected stream socket (or one accepted from ``listener``)."""

    name = "stream"

    def __init__(self, sock: Optional[socket.socket] = None, listener: Optional[socket.socket] = None) -> None:
        super().__init__()
        if sock is None and listener is None:
            raise ValueError("a stream back-end needs a connected socket or a listener")
        self.sock = sock
        self.listener = listener
        self._pending = bytearray()
        self._send_lock = threading.Lock()
        self.bad_lengths = 0

    def fileno(self) -> int:
        return (self.sock or self.listener).fileno()  # type: ignore[union-attr]

    def receive_frames(self) -> Optional[List[bytes]]:
        if self.sock is None:
            conn, _ = self.listener.accept()  # type: ignore[union-attr]
            with self._send_lock:
                self.sock = conn
            return []
        try:
            data = self.sock.recv(MAX_FRAME_SIZE + LENGTH_PREFIX.size)
        except ConnectionError:
            if self.listener is None:
                raise
            data = b""  # a server outlives its peer's abrupt exit
        if not data:
            return self._peer_gone()
        self._pending += data
        return self._split_frames()

    def _split_frames(self) -> Optional[List[bytes]]:
        frames = []
        while len(self._pending) >= LENGTH_PREFIX.size:
            (length,) = LENGTH_PREFIX.unpack_from(self._pending)
            if length > MAX_FRAME_SIZE:
                # The stream is out of step or the peer is hostile: nothing after this can be
                # framed reliably, so the connection is dropped.
                self.bad_lengths += 1
                log.warning("stream: peer sent a frame length of %d bytes (at most %d); disconnecting",
                            length, MAX_FRAME_SIZE)
                return self._peer_gone() if self.listener is None else self._drop_connection()
            end = LENGTH_PREFIX.size + length
            if len(self._pending) < end:
                break
            frames.append(bytes(self._pending[LENGTH_PREFIX.size:end]))
            del self._pending[:end]
        return frames

    def _drop_connection(self) -> List[bytes]:
        with self._send_lock:
            if self.sock is not None:
                self.sock.close()
            self.sock = None
        self._pending.clear()
        return []

    def _peer_gone(self) -> Optional[List[bytes]]:
        if self.listener is not None:
            return self._drop_connection()  # a server waits for the next peer
        return None

    def send(self, frame: bytes) -> None:
        with self._send_lock:
            if self.sock is None or len(frame) > MAX_FRAME_SIZE:
                self.dropped_frames += 1
                return
            try:
                self.sock.sendall(LENGTH_PREFIX.pack(len(frame)) + frame)
                self.sent_frames += 1
            except OSError:
                self.dropped_frames += 1

    def close_backend(self) -> None:
        for sock in (self.sock, self.listener):
            if sock is not None:
                sock.close()


class DgramBackend(NetBackend):
    """One frame per datagram: sent to ``remote``, received on the bound socket."""

    name = "dgram"

    def __init__(self, sock: socket.socket, remote: Optional[Address] = None) -> None:
        super().__init__()
        self.sock = sock
        self.remote = remote

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive_frames(self) -> Optional[List[bytes]]:
        frame = self.sock.recv(MAX_FRAME_SIZE)
        return [frame] if frame else []

    def send(self, frame: bytes) -> None:
        try:
            if self.remote is None:
                self.sock.send(frame)
            else:
                self.sock.sendto(frame, self.remote)
            self.sent_frames += 1
        except OSError:
            self.dropped_frames += 1  # nobody listening at the remote end yet

    def close_backend(self) -> None:
        self.sock.close()


def _address(spec: NetdevSpec, props: Dict[str, str], prefix: str, required: bool = True):
    """(family, address) from ``PREFIX.type`` and its fields, or None when absent and optional."""
    kind = props.pop(f"{prefix}.type", "")
    if not kind:
        if required:
            raise NetdevError(f"-netdev {spec.text}: missing {prefix}.type= (unix or inet)")
        return None
    if kind == "unix":
        path = props.pop(f"{prefix}.path", "")
        if not path:
            raise NetdevError(f"-netdev {spec.text}: {prefix}.type=unix needs {prefix}.path=")
        return socket.AF_UNIX, path
    if kind == "inet":
        host = props.pop(f"{prefix}.host", "")
        port = props.pop(f"{prefix}.port", "")
        try:
            return socket.AF_INET, (host or "0.0.0.0", int(port))
        except ValueError:
            raise NetdevError(f"-netdev {spec.text}: {prefix}.port='{port}' is not a port number") from None
    raise NetdevError(f"-netdev {spec.text}: {prefix}.type={kind} is not supported (unix, inet)")


def open_stream(spec: NetdevSpec, props: Dict[str, str]) -> StreamBackend:
    server = parse_on_off(f"-netdev {spec.text}", "server", props.pop("server", "off"))
    family, address = _address(spec, props, "addr")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if server:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(1)
            return StreamBackend(listener=sock)
        sock.connect(address)
        return StreamBackend(sock)
    except OSError as err:
        sock.close()
        what = "listen on" if server else "connect to"
        raise NetdevError(f"-netdev {spec.text}: cannot {what} {address}: {err.strerror or err}") from err


def open_dgram(spec: NetdevSpec, props: Dict[str, str]) -> DgramBackend:
    local = _address(spec, props, "local", required=False)
    remote = _address(spec, props, "remote", required=False)
    if local is None and remote is None:
        raise NetdevError(f"-netdev {spec.text}: dgram needs local.* and/or remote.* addresses")
    family = (local or remote)[0]
    if local is not None and remote is not None and local[0] != remote[0]:
        raise NetdevError(f"-netdev {spec.text}: local and remote addresses are of different types")
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if local is not None:
            sock.bind(local[1])
    except OSError as err:
        sock.close()
        raise NetdevError(f"-netdev {spec.text}: cannot bind {local[1]}: {err.strerror or err}") from err
    return DgramBackend(sock, remote[1] if remote is not None else None)

"""-netdev parsing and the stream/dgram back-ends on real sockets: framing, server mode,
hostile lengths, and clear errors for bad options."""

from __future__ import annotations

import queue
import socket
import struct

import pytest

from pyhv.errors import ConfigError
from pyhv.net.backend import MAX_FRAME_SIZE, NetdevError, open_netdev, parse_netdev
from pyhv.net.socket import DgramBackend, StreamBackend

FRAME = bytes(range(60))


def test_parse_netdev():
    spec = parse_netdev("stream,id=n0,server=on,addr.type=unix,addr.path=/tmp/x")
    assert (spec.kind, spec.id) == ("stream", "n0")
    assert spec.props == {"server": "on", "addr.type": "unix", "addr.path": "/tmp/x"}


@pytest.mark.parametrize("text,message", [
    ("stream,addr.type=unix,addr.path=/x", "missing id="),
    (",id=n0", "missing the back-end type"),
    ("user,id=n0", "unsupported back-end 'user' \\(for user-mode networking run passt"),
    ("vde,id=n0", "unsupported back-end 'vde'"),
    ("stream,id=n0", "missing addr.type="),
    ("stream,id=n0,addr.type=vsock", "addr.type=vsock is not supported"),
    ("stream,id=n0,addr.type=unix", "needs addr.path="),
    ("stream,id=n0,addr.type=inet,addr.host=127.0.0.1,addr.port=http", "addr.port='http' is not a port"),
    ("stream,id=n0,addr.type=unix,addr.path=/nonexistent/pyhv.sock", "cannot connect to /nonexistent/pyhv.sock"),
    ("dgram,id=n0", "needs local.\\* and/or remote.\\*"),
    ("dgram,id=n0,local.type=unix,local.path=/nonexistent/a", "cannot bind /nonexistent/a"),
])
def test_bad_netdev_options(text, message):
    with pytest.raises(NetdevError, match=message):
        open_netdev(parse_netdev(text))


def test_unknown_property_is_refused_and_the_socket_closed(tmp_path):
    path = str(tmp_path / "d.sock")
    with pytest.raises(NetdevError, match="unsupported property 'colour'"):
        open_netdev(parse_netdev(f"dgram,id=n0,local.type=unix,local.path={path},colour=blue"))
    # The bound socket was closed: the path can be bound again after unlinking.
    (tmp_path / "d.sock").unlink()
    open_netdev(parse_netdev(f"dgram,id=n0,local.type=unix,local.path={path}")).close()


def test_stream_server_accepts_a_peer_and_serves_the_next(tmp_path):
    path = str(tmp_path / "net.sock")
    backend = open_netdev(parse_netdev(f"stream,id=n0,server=on,addr.type=unix,addr.path={path}"))
    frames = queue.Queue()
    backend.start(frames.put)
    try:
        for round_ in range(2):
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.connect(path)
            payload = FRAME + bytes([round_])
            peer.sendall(struct.pack(">I", len(payload)) + payload)
            assert frames.get(timeout=10) == payload
            backend.send(FRAME)
            assert peer.recv(4) == struct.pack(">I", len(FRAME))
            peer.close()
    finally:
        backend.close()


def test_stream_client_over_tcp():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    backend = open_netdev(parse_netdev(f"stream,id=n0,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"))
    peer, _ = listener.accept()
    try:
        backend.send(FRAME)
        assert peer.recv(4 + len(FRAME)) == struct.pack(">I", len(FRAME)) + FRAME
    finally:
        backend.close()
        peer.close()
        listener.close()


def test_stream_hostile_length_disconnects():
    ours, peer = socket.socketpair()
    backend = StreamBackend(ours)
    frames = queue.Queue()
    backend.start(frames.put)
    peer.sendall(struct.pack(">I", MAX_FRAME_SIZE + 1) + b"junk")
    backend._thread.join(timeout=10)
    assert not backend._thread.is_alive()  # the reader stopped instead of buffering forever
    assert backend.bad_lengths == 1
    assert frames.empty()
    backend.close()
    peer.close()


def test_stream_peer_gone_drops_sends():
    ours, peer = socket.socketpair()
    backend = StreamBackend(ours)
    peer.close()
    backend.send(FRAME)
    backend.send(bytes(MAX_FRAME_SIZE + 1))  # too long to frame
    assert backend.dropped_frames == 2
    backend.close()


def test_dgram_unix_paths(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    first = open_netdev(parse_netdev(f"dgram,id=n0,local.type=unix,local.path={a},remote.type=unix,remote.path={b}"))
    first.send(FRAME)  # nobody at b yet: dropped, not an error
    assert first.dropped_frames == 1
    second = open_netdev(parse_netdev(f"dgram,id=n1,local.type=unix,local.path={b},remote.type=unix,remote.path={a}"))
    frames = queue.Queue()
    second.start(frames.put)
    try:
        first.send(FRAME)
        assert frames.get(timeout=10) == FRAME
        assert isinstance(second, DgramBackend)
    finally:
        first.close()
        second.close()


def test_close_stops_the_reader_thread():
    ours, peer = socket.socketpair()
    backend = StreamBackend(ours)
    backend.start(lambda frame: None)
    thread = backend._thread
    backend.close()
    assert not thread.is_alive()
    backend.close()  # twice is harmless
    peer.close()


def test_stream_server_takes_on_or_off_only():
    with pytest.raises(ConfigError, match="server expects on or off, got 'maybe'"):
        open_netdev(parse_netdev("stream,id=n0,server=maybe,addr.type=unix,addr.path=/nonexistent/x.sock"))

"""Character back-ends: spec parsing, the Unix socket server with real clients, stdio and Ctrl-A."""

from __future__ import annotations

import os
import queue
import select
import shutil
import socket
import tempfile
import threading
from typing import Iterator

import pytest

from pyhv.chardev import (FLUSH_SIZE, EscapeCommand, EscapeDecoder, FileBackend, LineBufferedOutput,
                          NoneBackend, NullBackend, StdioBackend, UnixSocketBackend, open_chardev,
                          split_options)
from pyhv.errors import ConfigError
from pyhv.lifecycle import Lifecycle, Shutdown

# Generous bounds that only matter when something is broken; nothing here measures time.
PATIENCE = 10.0


@pytest.fixture
def short_dir() -> Iterator[str]:
    # Unix socket paths must fit in 107 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="pyhv-chardev-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def client_of(path: str) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(PATIENCE)
    client.connect(path)
    return client


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


# --- parsing --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,kind", [
    ("null", NullBackend), ("none", NoneBackend), ("stdio", StdioBackend),
    ("mon:stdio", StdioBackend), ("stdio,signal=off", StdioBackend),
])
def test_simple_specs(spec: str, kind: type) -> None:
    backend = open_chardev(spec, Lifecycle())
    try:
        assert type(backend) is kind
        assert backend.wants_device == (spec != "none")
    finally:
        backend.close()


@pytest.mark.parametrize("spec,message", [
    ("", "unsupported character device ''"),
    ("pty", "unsupported character device 'pty'"),
    ("tcp:localhost:4444,server,nowait", "unsupported character device 'tcp:localhost:4444"),
    ("stdio:", "unsupported character device 'stdio:'"),
    ("file:", "'file:': file: needs a path"),
    ("unix:", "'unix:': unix: needs a path"),
    ("unix:/tmp/x.sock,server,bogus", "unknown option 'bogus'"),
    ("unix:/tmp/x.sock,server=maybe", "option server expects on or off, got 'maybe'"),
    ("unix:/tmp/x.sock,nowait", "wait/nowait only applies to a server socket"),
    ("stdio,signal=maybe", "option signal expects on or off"),
    ("stdio,mux=on", "'stdio,mux=on': unknown option 'mux=on'"),
    ("unix:/tmp/" + "x" * 120 + ",server,nowait", "path longer than 107 bytes"),
    ("file:/nonexistent-dir/console.log", "file:/nonexistent-dir/console.log: cannot open for writing"),
    ("unix:/nonexistent-dir/s.sock", "unix:/nonexistent-dir/s.sock: cannot connect"),
    ("unix:/nonexistent-dir/s.sock,server,nowait", "unix:/nonexistent-dir/s.sock: cannot listen"),
])
def test_bad_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_chardev(spec, Lifecycle())
    assert message in str(info.value)


def test_split_options_keeps_doubled_commas() -> None:
    assert split_options("/tmp/a,,b.sock,server,wait=off") == ["/tmp/a,b.sock", "server", "wait=off"]


def test_file_backend_appends(short_dir: str) -> None:
    path = os.path.join(short_dir, "console.log")
    for text in (b"first boot\n", b"second boot\n"):
        backend = open_chardev("file:" + path)
        assert isinstance(backend, FileBackend)
        backend.write(text)
        backend.close()
    with open(path, "rb") as log:
        assert log.read() == b"first boot\nsecond boot\n"


def read_now(fd: int) -> bytes:
    """What is in the pipe at this instant (b"" if nothing), without waiting."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""
    finally:
        os.set_blocking(fd, True)


def test_line_buffered_output_flushes_at_newline_size_and_close() -> None:
    read_end, write_end = os.pipe()
    output = LineBufferedOutput(write_end)
    try:
        output.write(b"[    0.000000] Linux")
        output.write(b" version\r\n")
        assert read_now(read_end) == b"[    0.000000] Linux version\r\n"  # written synchronously
        output.write(b"x" * FLUSH_SIZE)
        assert read_now(read_end) == b"x" * FLUSH_SIZE
        output.write(b"tail without newline")
        output.close()
        assert read_now(read_end) == b"tail without newline"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_line_buffered_output_flushes_a_prompt_on_its_own() -> None:
    read_end, write_end = os.pipe()
    output = LineBufferedOutput(write_end)
    try:
        for byte in b"login: ":
            output.write(bytes((byte,)))
        received = b""
        while received != b"login: ":  # arrives without a newline, a close or more output
            ready, _, _ = select.select([read_end], [], [], PATIENCE)
            assert ready, f"prompt never flushed; got {received!r}"
            received += os.read(read_end, 100)
    finally:
        output.close()
        os.close(read_end)
        os.close(write_end)


# --- unix socket ---------------------------------------------------------------------------

def test_unix_server_talks_to_one_client_at_a_time(short_dir: str) -> None:
    path = os.path.join(short_dir, "serial.sock")
    backend = open_chardev(f"unix:{path},server,nowait")
    assert isinstance(backend, UnixSocketBackend)
    received: "queue.Queue[bytes]" = queue.Queue()
    try:
        backend.start(received.put)
        backend.write(b"dropped: nobody listens")
        first = client_of(path)
        first.sendall(b"ls\r")
        assert received.get(timeout=PATIENCE) == b"ls\r"  # input proves the client is served
        backend.write(b"login: ")
        assert recv_exactly(first, 7) == b"login: "

        second = client_of(path)  # waits in the backlog while the first is served
        second.sendall(b"ignored for now")
        first.close()
        assert received.get(timeout=PATIENCE) == b"ignored for now"  # the second is now served
        backend.write(b"hello second")
        assert recv_exactly(second, 12) == b"hello second"
        second.close()
    finally:
        backend.close()
    assert not os.path.exists(path)


def test_unix_server_replaces_stale_socket_but_not_a_file(short_dir: str) -> None:
    path = os.path.join(short_dir, "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    backend = open_chardev(f"unix:{path},server=on,wait=off")
    backend.close()
    with open(path, "w") as regular:
        regular.write("precious")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        open_chardev(f"unix:{path},server,nowait")


def test_unix_server_that_waits_returns_once_a_client_connects(short_dir: str) -> None:
    path = os.path.join(short_dir, "wait.sock")
    connected: "queue.Queue[socket.socket]" = queue.Queue()

    def connect_when_listening() -> None:
        while True:
            try:
                connected.put(client_of(path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                threading.Event().wait(0.01)

    helper = threading.Thread(target=connect_when_listening, daemon=True)
    helper.start()
    backend = open_chardev(f"unix:{path},server")
    try:
        assert backend.connected
        client = connected.get(timeout=PATIENCE)
        backend.write(b"early output is not lost")
        assert recv_exactly(client, 24) == b"early output is not lost"
        client.close()
    finally:
        backend.close()


def test_unix_client_mode_connects_to_a_listener(short_dir: str) -> None:
    path = os.path.join(short_dir, "listener.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    backend = open_chardev(f"unix:{path}")
    received: "queue.Queue[bytes]" = queue.Queue()
    try:
        peer, _ = listener.accept()
        backend.start(received.put)
        backend.write(b"out")
        assert recv_exactly(peer, 3) == b"out"
        peer.sendall(b"in")
        assert received.get(timeout=PATIENCE) == b"in"
        peer.close()
    finally:
        backend.close()
        listener.close()


# --- Ctrl-A escape -------------------------------------------------------------------------

def test_escape_decoder_splits_commands_from_guest_input() -> None:
    decoder = EscapeDecoder()
    assert decoder.feed(b"ab\x01xcd") == [b"ab", EscapeCommand("x"), b"cd"]
    assert decoder.feed(b"\x01\x01") == [b"\x01"]  # Ctrl-A Ctrl-A: a literal Ctrl-A
    assert decoder.feed(b"\x01h") == [EscapeCommand("h")]
    assert decoder.feed(b"q\x01zq") == [b"qq"]  # unknown keys are swallowed
    assert decoder.feed(b"") == []


def test_escape_split_across_reads() -> None:
    decoder = EscapeDecoder()
    assert decoder.feed(b"echo\x01") == [b"echo"]
    assert decoder.feed(b"x") == [EscapeCommand("x")]
    assert decoder.feed(b"\x01") == []
    assert decoder.feed(b"\x01rest") == [b"\x01rest"]


def test_stdio_from_a_pipe_passes_everything_through() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    lifecycle = Lifecycle()
    backend = StdioBackend(lifecycle, in_fd=in_r, out_fd=out_w)
    received: "queue.Queue[bytes]" = queue.Queue()
    try:
        backend.start(received.put)
        os.write(in_w, b"\x01x")  # not a TTY: no escapes
        assert received.get(timeout=PATIENCE) == b"\x01x"
        assert lifecycle.pending is None
        backend.write(b"guest says hi")
        assert os.read(out_r, 100) == b"guest says hi"
        os.close(in_w)  # EOF ends the reader quietly
    finally:
        backend.close()
        for fd in (in_r, out_r, out_w):
            os.close(fd)


def test_stdio_on_a_tty_uses_raw_mode_and_ctrl_a_x_quits() -> None:
    termios = pytest.importorskip("termios")
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    lifecycle = Lifecycle()
    backend = StdioBackend(lifecycle, in_fd=slave, out_fd=slave)
    received: "queue.Queue[bytes]" = queue.Queue()
    try:
        backend.start(received.put)
        raw = termios.tcgetattr(slave)
        assert not raw[3] & termios.ICANON and not raw[3] & termios.ECHO
        os.write(master, b"root\r\x01\x01")
        got = b""
        while len(got) < 6:
            got += received.get(timeout=PATIENCE)
        assert got == b"root\r\x01"  # no CR->NL translation in raw mode, literal Ctrl-A
        os.write(master, b"\x01h")
        help_text = b""
        while b"exit pyhv" not in help_text:
            help_text += os.read(master, 1024)
        os.write(master, b"\x01x")
        assert lifecycle.stopped.wait(PATIENCE)
        assert lifecycle.pending == Shutdown(0, "Ctrl-A x on the console")
    finally:
        backend.close()
    assert termios.tcgetattr(slave) == before
    os.close(master)
    os.close(slave)

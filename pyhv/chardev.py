"""Character back-ends behind a UART or console: QEMU's ``-serial`` / ``-chardev`` spellings.

A back-end takes the guest's output through :meth:`CharBackend.write` and, once
:meth:`CharBackend.start` gave it a receiver, feeds host input to it from its own thread.
:func:`open_chardev` turns a spec string into a back-end:

``stdio`` (also ``mon:stdio``, ``stdio,signal=off``), ``file:PATH``,
``unix:PATH[,server][,nowait|,wait=off]``, ``null`` and ``none``.

Output to stdio and files is line-buffered: flushed at every newline, when 4 KiB pile up,
and :data:`FLUSH_DELAY` after a partial line (a ``login:`` prompt), plus on close. The guest
writes one byte per port exit (about 8 µs under KVM). Measured here, one ``os.write`` per
byte costs 1.8-3.8 µs (CPython; 1.3-1.5 µs on PyPy) to a file, pipe or pty, and line
buffering 0.1-0.3 µs: flushing each byte would add a quarter to a half of the exit cost,
while the flush timer is one thread wake-up per partial line.
"""

from __future__ import annotations

import atexit
import os
import select
import socket
import stat
import sys
import threading
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

from .errors import ConfigError
from .lifecycle import Lifecycle

Receiver = Callable[[bytes], None]

ESCAPE_BYTE = 0x01  # Ctrl-A, as in QEMU's -nographic multiplexer
READ_CHUNK = 4096
FLUSH_SIZE = 4096
FLUSH_DELAY = 0.005  # seconds a partial line may wait for the rest of it
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL

ESCAPE_HELP = (
    b"\r\n"
    b"C-a h    print this help\r\n"
    b"C-a x    exit pyhv\r\n"
    b"C-a C-a  send C-a to the guest\r\n"
)


class CharBackend:
    """Output sink and optional input source; this base has no input."""

    #: False only for ``none``: the machine should not create the device at all.
    wants_device = True

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def start(self, receiver: Receiver) -> None:
        """Deliver host input to ``receiver`` from now on (from a back-end thread)."""

    def close(self) -> None:
        """Stop the input thread and release host resources; idempotent."""

    def __enter__(self) -> "CharBackend":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NullBackend(CharBackend):
    """``null``: output is discarded, no input ever arrives."""

    def write(self, data: bytes) -> None:
        pass


class NoneBackend(NullBackend):
    """``none``: QEMU's "no device here"; behaves as ``null`` if a device is made anyway."""

    wants_device = False


class BufferBackend(CharBackend):
    """Output kept in memory and input fed by hand: for tests and embedding pyhv."""

    def __init__(self) -> None:
        self._output = bytearray()
        self._changed = threading.Condition()
        self._receiver: Optional[Receiver] = None

    def write(self, data: bytes) -> None:
        with self._changed:
            self._output += data
            self._changed.notify_all()

    def start(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def feed(self, data: bytes) -> None:
        """Send ``data`` to the guest as if typed on the host."""
        if self._receiver is None:
            raise RuntimeError("BufferBackend.feed() before start()")
        self._receiver(data)

    @property
    def output(self) -> bytes:
        with self._changed:
            return bytes(self._output)

    def wait_for(self, needle: bytes, timeout: float) -> bool:
        """Block until the output contains ``needle``; False if ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: needle in self._output, timeout)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out, waiting if ``fd`` was left non-blocking."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


class LineBufferedOutput:
    """Bytes for one fd, flushed at a newline, at FLUSH_SIZE, FLUSH_DELAY after a partial
    line, and on :meth:`close`. Safe to call from several threads."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._changed = threading.Condition()
        self._closed = False
        self._flusher: Optional[threading.Thread] = None

    def write(self, data: bytes) -> None:
        with self._changed:
            was_empty = not self._buffer
            self._buffer += data
            if b"\n" in data or len(self._buffer) >= FLUSH_SIZE or self._closed:
                self._flush_locked()
            elif was_empty:
                # Only the first byte of a partial line wakes the flusher: a wake-up per
                # byte would cut its timed wait short and flush byte by byte again.
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._flush_later, name="pyhv-flush",
                                                     daemon=True)
                    self._flusher.start()
                else:
                    self._changed.notify()

    def flush(self) -> None:
        with self._changed:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            write_all(self._fd, data)

    def _flush_later(self) -> None:
        with self._changed:
            while not self._closed:
                if not self._buffer:
                    self._changed.wait()
                    continue
                self._changed.wait(FLUSH_DELAY)
                self._flush_locked()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._flush_locked()
            self._changed.notify_all()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=2.0)


class FileBackend(CharBackend):
    """``file:PATH``: guest output appended to a file."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd: Optional[int] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as err:
            raise ConfigError(f"chardev file:{path}: cannot open for writing: {err.strerror}") from err
        self._output = LineBufferedOutput(self._fd)

    def write(self, data: bytes) -> None:
        self._output.write(data)

    def close(self) -> None:
        if self._fd is not None:
            self._output.close()
            os.close(self._fd)
            self._fd = None


# --- the Ctrl-A escape of the stdio console --------------------------------------------------

class EscapeCommand(NamedTuple):
    """A console command typed as Ctrl-A followed by ``key``."""

    key: str


class EscapeDecoder:
    """Splits console input into bytes for the guest and Ctrl-A commands.

    Ctrl-A Ctrl-A gives one literal Ctrl-A; Ctrl-A followed by a key the console does not
    know is swallowed, as QEMU does. The state survives across :meth:`feed` calls, so an
    escape split between two reads still works.
    """

    COMMANDS = frozenset("xh?")

    def __init__(self) -> None:
        self._after_escape = False

    def feed(self, data: bytes) -> List[Union[bytes, EscapeCommand]]:
        events: List[Union[bytes, EscapeCommand]] = []
        plain = bytearray()
        for byte in data:
            if self._after_escape:
                self._after_escape = False
                if byte == ESCAPE_BYTE:
                    plain.append(byte)
                    continue
                key = chr(byte)
                if key in self.COMMANDS:
                    if plain:
                        events.append(bytes(plain))
                        plain.clear()
                    events.append(EscapeCommand(key))
            elif byte == ESCAPE_BYTE:
                self._after_escape = True
            else:
                plain.append(byte)
        if plain:
            events.append(bytes(plain))
        return events


class _InputThread:
    """A daemon thread reading one fd into a callback until EOF or :meth:`stop`."""

    def __init__(self, name: str, fd: int, on_data: Receiver) -> None:
        self._fd = fd
        self._on_data = on_data
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._fd, self._wake_r], [], [])
                if self._wake_r in ready:
                    return
                try:
                    data = os.read(self._fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self._on_data(data)
        finally:
            os.close(self._wake_r)

    def stop(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"\0")
        except BrokenPipeError:
            pass  # the thread already ended on EOF and closed its end
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        os.close(self._wake_w)
        self._wake_w = -1


class StdioBackend(CharBackend):
    """``stdio``: the terminal pyhv runs in.

    On a TTY, input is switched to raw mode (restored on :meth:`close` and at interpreter
    exit, whatever ended the run) and the Ctrl-A escape is active. Any other stdin is just
    read, byte for byte, escapes included.
    """

    def __init__(self, lifecycle: Optional[Lifecycle], signals: bool = True,
                 in_fd: int = 0, out_fd: int = 1) -> None:
        self._lifecycle = lifecycle
        self._signals = signals
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._saved_tty: Optional[list] = None
        self._decoder: Optional[EscapeDecoder] = None
        self._reader: Optional[_InputThread] = None
        self._receiver: Optional[Receiver] = None
        self._output = LineBufferedOutput(out_fd)
        atexit.register(self._output.flush)

    def write(self, data: bytes) -> None:
        self._output.write(data)

    def start(self, receiver: Receiver) -> None:
        self._receiver = receiver
        if os.isatty(self._in_fd):
            self._enter_raw_mode()
            self._decoder = EscapeDecoder()
        self._reader = _InputThread("pyhv-stdio", self._in_fd, self._on_input)

    def _enter_raw_mode(self) -> None:
        import termios

        self._saved_tty = termios.tcgetattr(self._in_fd)
        attrs = termios.tcgetattr(self._in_fd)
        attrs[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                      | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        attrs[1] |= termios.OPOST  # keep the host's newline translation for our messages
        attrs[2] = (attrs[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
        if not self._signals:
            attrs[3] &= ~termios.ISIG
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(self._in_fd, termios.TCSANOW, attrs)
        atexit.register(self._restore_tty)

    def _restore_tty(self) -> None:
        if self._saved_tty is not None:
            import termios

            termios.tcsetattr(self._in_fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None

    def _on_input(self, data: bytes) -> None:
        assert self._receiver is not None
        if self._decoder is None:
            self._receiver(data)
            return
        for event in self._decoder.feed(data):
            if isinstance(event, EscapeCommand):
                self._run_command(event.key)
            else:
                self._receiver(event)

    def _run_command(self, key: str) -> None:
        if key == "x":
            self.write(b"\r\npyhv: terminated\r\n")
            if self._lifecycle is not None:
                self._lifecycle.shutdown(0, "Ctrl-A x on the console")
        else:
            self.write(ESCAPE_HELP)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self._output.close()
        self._restore_tty()


# --- Unix socket ---------------------------------------------------------------------------

class UnixSocketBackend(CharBackend):
    """``unix:PATH``: a listening socket (``server``) with one client at a time, or a client.

    Output while no client is connected is dropped. A server that waits (QEMU's default for
    ``server`` without ``nowait``) blocks in the constructor until the first client arrives.
    """

    def __init__(self, path: str, server: bool, wait: bool) -> None:
        self.path = path
        self._server = server
        self._listener: Optional[socket.socket] = None
        self._client: Optional[socket.socket] = None
        self._client_lock = threading.Lock()
        self._receiver: Optional[Receiver] = None
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise ConfigError(f"chardev unix:{path}: path longer than {UNIX_PATH_MAX} bytes")
        if server:
            self._listen()
            if wait:
                print(f"pyhv: waiting for connection on unix:{path}", file=sys.stderr)
                self._client, _ = self._listener.accept()  # type: ignore[union-attr]
        else:
            self._client = self._connect()
        if server:
            self._start_thread()

    def _listen(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(mode):
                raise ConfigError(f"chardev unix:{self.path}: exists and is not a socket")
            os.unlink(self.path)  # a stale socket from an earlier run
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            listener.listen(1)
        except OSError as err:
            listener.close()
            raise ConfigError(f"chardev unix:{self.path}: cannot listen: {err.strerror}") from err
        self._listener = listener

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as err:
            sock.close()
            raise ConfigError(f"chardev unix:{self.path}: cannot connect: {err.strerror}") from err
        return sock

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._serve, name=f"pyhv-unix:{self.path}", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._client is not None

    def write(self, data: bytes) -> None:
        with self._client_lock:
            client = self._client
            if client is None:
                return
            try:
                client.sendall(data)
            except OSError:
                # The reader side sees the shutdown as EOF and forgets the client.
                self._shutdown_quietly(client)

    def start(self, receiver: Receiver) -> None:
        self._receiver = receiver
        if self._thread is None:
            self._start_thread()
        else:
            os.write(self._wake_w, b"r")  # start reading from an already-connected client

    def _serve(self) -> None:
        while not self._closed:
            client = self._client
            watched: List[object] = [self._wake_r]
            if client is None:
                if self._listener is None:
                    return  # a client-mode socket whose peer went away
                watched.append(self._listener)
            elif self._receiver is not None:
                watched.append(client)
            ready, _, _ = select.select(watched, [], [])
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
                continue
            if client is None:
                self._accept()
            else:
                self._read_from(client)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()  # type: ignore[union-attr]
        except OSError:
            return
        with self._client_lock:
            self._client = client

    def _read_from(self, client: socket.socket) -> None:
        try:
            data = client.recv(READ_CHUNK)
        except OSError:
            data = b""
        if data:
            assert self._receiver is not None
            self._receiver(data)
            return
        with self._client_lock:
            if self._client is client:
                self._client = None
        client.close()

    @staticmethod
    def _shutdown_quietly(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"q")
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        if self._listener is not None:
            self._listener.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self._wake_r)
        os.close(self._wake_w)


# --- spec parsing ------------------------------------------------------------------------------

def split_options(text: str) -> List[str]:
    """Split QEMU-style ``a,b=c`` options; ``,,`` stands for a literal comma."""
    parts = [""]
    i = 0
    while i < len(text):
        char = text[i]
        if char == ",":
            if text[i + 1:i + 2] == ",":
                parts[-1] += ","
                i += 2
                continue
            parts.append("")
        else:
            parts[-1] += char
        i += 1
    return parts


def parse_on_off(what: str, key: str, value: str) -> bool:
    """An on/off option in QEMU's spellings (on/off, yes/no, true/false); anything else is
    refused, naming ``what`` (the option as given) and ``key``."""
    if value in ("on", "yes", "true"):
        return True
    if value in ("off", "no", "false"):
        return False
    raise ConfigError(f"{what}: {key} expects on or off, got '{value}'")


def _parse_flags(spec: str, options: List[str], known: Tuple[str, ...], what: str = "") -> dict:
    """Options as {name: bool}; QEMU's bare ``server`` / ``nowait`` spellings included.
    Errors name ``what`` (default: ``chardev 'SPEC'``)."""
    what = what or f"chardev {spec!r}"
    flags = {}
    for option in options:
        name, has_value, value = option.partition("=")
        if not has_value and name.startswith("no") and name[2:] in known:
            flags[name[2:]] = False
        elif name in known:
            flags[name] = parse_on_off(what, f"option {name}", value) if has_value else True
        else:
            raise ConfigError(f"{what}: unknown option {option!r}")
    return flags


def parse_unix_spec(spec: str, what: str = "") -> Tuple[str, bool, bool]:
    """``unix:PATH[,server[=on|off]][,wait=on|off|,nowait]``: (path, server, wait). As in
    QEMU, a server waits for its first client unless told not to. Errors name ``what``
    (default: ``chardev 'SPEC'``)."""
    what = what or f"chardev {spec!r}"
    kind, colon, rest = spec.partition(":")
    parts = split_options(rest)
    if kind != "unix" or not colon or not parts[0]:
        raise ConfigError(f"{what}: unix: needs a path")
    flags = _parse_flags(spec, parts[1:], ("server", "wait"), what)
    server = flags.get("server", False)
    if "wait" in flags and not server:
        raise ConfigError(f"{what}: wait/nowait only applies to a server socket")
    return parts[0], server, flags.get("wait", True)


def open_chardev(spec: str, lifecycle: Optional[Lifecycle] = None) -> CharBackend:
    """Open the back-end a QEMU ``-serial`` spec names; ConfigError for anything else."""
    kind, colon, rest = spec.partition(":")
    if spec == "null":
        return NullBackend()
    if spec == "none":
        return NoneBackend()
    if spec == "mon:stdio" or (not colon and kind.split(",")[0] == "stdio"):
        options = split_options(spec)[1:] if not colon else []
        flags = _parse_flags(spec, options, ("signal",))
        return StdioBackend(lifecycle, signals=flags.get("signal", True))
    if colon and kind == "file":
        if not rest:
            raise ConfigError(f"chardev {spec!r}: file: needs a path")
        return FileBackend(rest)
    if colon and kind == "unix":
        path, server, wait = parse_unix_spec(spec)
        return UnixSocketBackend(path, server=server, wait=wait)
    raise ConfigError(
        f"unsupported character device {spec!r}: expected stdio, file:PATH, "
        f"unix:PATH[,server][,nowait], null or none"
    )

"""A QMP server on a unix socket, speaking QEMU's protocol to any number of clients.

Each client gets the greeting, must negotiate with ``qmp_capabilities``, then sends
``{"execute": ..., "arguments": ..., "id": ...}`` objects and receives ``return`` or
``error`` replies carrying the same ``id``, plus asynchronous events with timestamps.
One thread accepts, one serves each client. Commands run one at a time, under a lock that
events do not take: an event never waits for a command (a command may itself wait for the
VM process to build its next machine, which the process announces with events first). As in
QEMU, an event can then reach a client before the reply to the command that caused it.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from typing import Any, Dict, List, Optional

from .. import __version__
from ..chardev import UNIX_PATH_MAX
from ..errors import ConfigError
from .commands import COMMAND_NOT_FOUND, GENERIC_ERROR, QEMU_VERSION, Monitor, QmpError, VmControl

READ_CHUNK = 4096
MAX_PENDING_INPUT = 1 << 20


class QmpSocketError(ConfigError):
    """The monitor socket could not be created."""


def event_message(event: str, data: Dict[str, Any], now: Optional[float] = None) -> Dict[str, Any]:
    """An event as QEMU sends it: an event without data (STOP, RESUME, POWERDOWN) has no
    ``data`` member at all."""
    now = time.time() if now is None else now
    seconds = int(now)
    message: Dict[str, Any] = {"event": event}
    if data:
        message["data"] = data
    message["timestamp"] = {"seconds": seconds, "microseconds": int((now - seconds) * 1_000_000)}
    return message


def greeting() -> Dict[str, Any]:
    return {"QMP": {"version": {"qemu": dict(QEMU_VERSION), "package": f"pyhv {__version__}"},
                    "capabilities": []}}


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.negotiated = False
        self.write_lock = threading.Lock()

    def send(self, message: Dict[str, Any]) -> bool:
        data = (json.dumps(message) + "\r\n").encode()
        with self.write_lock:
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                return False


class QmpServer:
    """Listens on ``path`` (QEMU's ``-qmp unix:PATH,server,nowait``) for ``control``."""

    def __init__(self, path: str, control: VmControl) -> None:
        self.path = path
        self.monitor = Monitor(control, self.emit)
        self._lock = threading.RLock()  # one command at a time; close() waits for it
        self._clients_lock = threading.Lock()  # the client list, for events too
        self._clients: List[_Client] = []
        self._closed = False
        self._first_client = threading.Event()
        self._listener = self._listen(path)
        self._thread = threading.Thread(target=self._accept_loop, name="pyhv-qmp", daemon=True)

    @staticmethod
    def _listen(path: str) -> socket.socket:
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise QmpSocketError(f"QMP socket {path}: path longer than {UNIX_PATH_MAX} bytes")
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # left by a process that was killed
            else:
                raise QmpSocketError(f"QMP socket {path}: exists and is not a socket")
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(8)
        except OSError as err:
            sock.close()
            raise QmpSocketError(f"QMP socket {path}: {err.strerror or err}") from err
        return sock

    def start(self) -> None:
        self._thread.start()

    def wait_for_client(self, timeout: Optional[float] = None) -> bool:
        """Block until a client has connected (QEMU's ``wait=on``); False on timeout."""
        return self._first_client.wait(timeout)

    def emit(self, event: str, data: Dict[str, Any]) -> None:
        """Send an event to every client that finished negotiation."""
        message = event_message(event, data)
        with self._clients_lock:
            clients = list(self._clients)
        for client in clients:
            if client.negotiated:
                client.send(message)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with self._clients_lock:
            clients, self._clients = self._clients, []
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for client in clients:
            try:
                client.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # --- threads ---------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            client = _Client(sock)
            with self._clients_lock:
                if self._closed:
                    sock.close()
                    return
                self._clients.append(client)
            self._first_client.set()
            threading.Thread(target=self._serve, args=(client,), name="pyhv-qmp-client", daemon=True).start()

    def _serve(self, client: _Client) -> None:
        decoder = json.JSONDecoder()
        pending = ""
        client.send(greeting())
        try:
            while True:
                try:
                    chunk = client.sock.recv(READ_CHUNK)
                except OSError:
                    return
                if not chunk:
                    return
                pending += chunk.decode("utf-8", "replace")
                pending = self._handle_input(client, decoder, pending)
                if len(pending) > MAX_PENDING_INPUT:
                    client.send(_error(GENERIC_ERROR, "JSON parse error, input too long"))
                    pending = ""
        finally:
            with self._clients_lock:
                if client in self._clients:
                    self._clients.remove(client)
            client.sock.close()

    def _handle_input(self, client: _Client, decoder: json.JSONDecoder, pending: str) -> str:
        """Run every complete object in ``pending``; return what is still arriving."""
        while True:
            text = pending.lstrip()
            if not text:
                return ""
            try:
                request, end = decoder.raw_decode(text)
            except json.JSONDecodeError as err:
                if err.msg.startswith("Unterminated") or err.pos >= len(text.rstrip()):
                    return text  # the input stopped inside an object: wait for more
                client.send(_error(GENERIC_ERROR, f"JSON parse error, {err.msg}"))
                line_end = text.find("\n", err.pos)
                pending = "" if line_end < 0 else text[line_end + 1:]
                continue
            pending = text[end:]
            with self._lock:
                client.send(self._dispatch(client, request))

    def _dispatch(self, client: _Client, request: Any) -> Dict[str, Any]:
        if not isinstance(request, dict):
            return _error(GENERIC_ERROR, "QMP input must be a JSON object")
        reply_id = request.get("id")
        reply = self._reply(client, request)
        if "id" in request:
            reply["id"] = reply_id
        return reply

    def _reply(self, client: _Client, request: Dict[str, Any]) -> Dict[str, Any]:
        name = request.get("execute")
        if name is None:
            return _error(GENERIC_ERROR, "QMP input lacks member 'execute'")
        if not isinstance(name, str):
            return _error(GENERIC_ERROR, "QMP input member 'execute' must be a string")
        unknown = set(request) - {"execute", "arguments", "id"}
        if unknown:
            return _error(GENERIC_ERROR, f"QMP input member '{unknown.pop()}' is unexpected")
        arguments = request.get("arguments", {})
        if name == "qmp_capabilities":
            return self._negotiate(client, arguments)
        if not client.negotiated:
            return _error(COMMAND_NOT_FOUND, "Expecting capabilities negotiation with 'qmp_capabilities'")
        try:
            return {"return": self.monitor.execute(name, arguments)}
        except QmpError as err:
            return _error(err.error_class, err.desc)

    @staticmethod
    def _negotiate(client: _Client, arguments: Any) -> Dict[str, Any]:
        if client.negotiated:
            return _error(COMMAND_NOT_FOUND, "Capabilities negotiation is already complete, command ignored")
        if not isinstance(arguments, dict) or set(arguments) - {"enable"}:
            return _error(GENERIC_ERROR, "qmp_capabilities takes only 'enable'")
        for capability in arguments.get("enable", []):
            return _error(GENERIC_ERROR, f"Capability '{capability}' not available")
        client.negotiated = True
        return {"return": {}}


def _error(error_class: str, desc: str) -> Dict[str, Any]:
    return {"error": {"class": error_class, "desc": desc}}

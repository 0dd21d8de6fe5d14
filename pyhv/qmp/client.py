"""A minimal synchronous QMP client, for `pyhv virsh` (tests use the real qemu.qmp client)."""

from __future__ import annotations

import json
import socket
from typing import Any, Dict, Optional

from ..errors import PyhvError

CONNECT_TIMEOUT_S = 10.0


class QmpClientError(PyhvError):
    """The monitor could not be reached, or answered something that is not QMP."""


class QmpClient:
    def __init__(self, path: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as err:
            self._sock.close()
            raise QmpClientError(f"cannot connect to the monitor {path}: {err.strerror or err}") from err
        self._file = self._sock.makefile("rb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpClientError(f"monitor {path}: not a QMP greeting: {greeting}")
        reply = self.call({"execute": "qmp_capabilities"})
        if "error" in reply:
            raise QmpClientError(f"monitor {path}: capabilities negotiation failed: {reply['error']}")

    def _read(self) -> Dict[str, Any]:
        try:
            line = self._file.readline()
        except OSError as err:
            raise QmpClientError(f"monitor {self.path}: {err}") from err
        if not line:
            raise QmpClientError(f"monitor {self.path}: connection closed")
        return json.loads(line)

    def call(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Send one request; the reply (``return`` or ``error``), skipping events."""
        self._sock.sendall((json.dumps(request) + "\n").encode())
        while True:
            message = self._read()
            if "event" not in message:
                return message

    def execute(self, command: str, arguments: Optional[Dict[str, Any]] = None) -> Any:
        request: Dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        reply = self.call(request)
        if "error" in reply:
            raise QmpClientError(reply["error"].get("desc", str(reply["error"])))
        return reply.get("return")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> "QmpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""`virsh console`: the terminal joined to a domain's serial socket until Ctrl-] detaches."""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import tty
from typing import BinaryIO, Optional

from .store import StoreError

ESCAPE_BYTE = 0x1D  # Ctrl-]
READ_CHUNK = 4096


def attach(path: str, name: str, stdin_fd: Optional[int] = None, out: Optional[BinaryIO] = None) -> int:
    """Relay between the terminal and ``path`` until Ctrl-] (0) or the domain goes away (1)."""
    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    out = sys.stdout.buffer if out is None else out
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        raise StoreError(f"cannot open the console of domain '{name}' ({path}): {err.strerror}") from err
    print(f"Connected to domain '{name}'\r\nEscape character is ^] (Ctrl + ])\r", file=sys.stderr, flush=True)
    saved = None
    if os.isatty(stdin_fd):
        saved = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd)
    try:
        return _relay(sock, stdin_fd, out)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        sock.close()


def _relay(sock: socket.socket, stdin_fd: int, out: BinaryIO) -> int:
    watched = [sock, stdin_fd]
    while True:
        ready, _, _ = select.select(watched, [], [])
        if sock in ready:
            data = sock.recv(READ_CHUNK)
            if not data:
                return 1  # the domain stopped
            out.write(data)
            out.flush()
        if stdin_fd in ready:
            data = os.read(stdin_fd, READ_CHUNK)
            if not data:
                watched = [sock]  # input closed: keep showing output
                continue
            escape = data.find(bytes([ESCAPE_BYTE]))
            if escape >= 0:
                if escape:
                    sock.sendall(data[:escape])
                return 0
            sock.sendall(data)

"""QEMU's ``-pidfile FILE``: the VM process's PID in FILE, locked while it runs, removed at exit.

The lock (``lockf`` on the open file, as QEMU takes it) is what tells a second VM given the same
file that the first still runs; a file left by a killed process holds no lock and is reused.
"""

from __future__ import annotations

import errno
import fcntl
import os

from .errors import ConfigError


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise ConfigError(f"-pidfile {path}: cannot open: {err.strerror}") from err
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise ConfigError(f"-pidfile {path}: locked by another process: is that VM still running?") from err
            raise ConfigError(f"-pidfile {path}: cannot lock: {err.strerror}") from err
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def close(self) -> None:
        """Remove the file, then let the lock go (in that order: a VM that takes the lock in
        between then writes a file of its own)."""
        if self._fd < 0:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = -1

"""QEMU's ``-daemonize``: the VM runs in a detached child; the command returns once it has started.

The command forks before it builds anything (no thread exists yet), and the parent waits on a
pipe. The child builds the machine and opens its sockets, reporting any error on the
command's own stderr; once started it says so on the pipe, leaves the session and moves its
standard streams to /dev/null. The parent exits 0 then, or 1 if the child ended first: so a
script that runs ``pyhv run -daemonize ...`` finds the VM's sockets and pidfile in place as
soon as the command returns, as with QEMU.
"""

from __future__ import annotations

import os
import sys
from typing import List

from .errors import ConfigError

STARTED = b"1"


def check_daemonizable(serial: List[str], chardevs: List[str]) -> None:
    """A daemon has no terminal: a console or chardev on stdio is refused, as QEMU does."""
    for spec in list(serial) + list(chardevs):
        if spec.split(",")[0] in ("stdio", "mon:stdio"):
            raise ConfigError("-daemonize: the console is on stdio (the default with -nographic); "
                              "give -serial file:PATH, -serial unix:PATH,server=on,wait=off or -serial none")


class Daemon:
    def __init__(self) -> None:
        self._started_fd = -1

    def detach(self) -> None:
        """Fork; only the child returns. The parent waits for :meth:`started` and exits."""
        sys.stdout.flush()
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        if os.fork() > 0:
            os.close(write_end)
            report = os.read(read_end, 1)  # empty: the child ended before it started the VM
            os._exit(0 if report == STARTED else 1)  # the child owns every resource from here
        os.close(read_end)
        os.setsid()
        self._started_fd = write_end

    def started(self) -> None:
        """The VM runs: let the parent go and drop the terminal (called once; later calls do
        nothing, as do calls without -daemonize)."""
        if self._started_fd < 0:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        os.write(self._started_fd, STARTED)
        os.close(self._started_fd)
        self._started_fd = -1

"""Compiling translated blocks' Python source in a helper process, beside the vCPU.

On CPython, ``compile()`` of a block's generated source is about half of what translating it
costs (1.1 ms of 2 ms; the Debian boot translates 12,900 blocks), and it holds the GIL, so a
thread cannot run it beside the vCPU. A helper process can, on another core: the vCPU hands it
the source and keeps interpreting the block until the code comes back (``marshal``, as
``__pycache__`` stores code), as JIT compilers compile in the background while the interpreter
goes on. Only the source crosses: the helper runs the same Python executable with nothing of
pyhv but the text of .flagprune, so its code objects are the ones :func:`compile_block` makes
here, dead flag locals pruned there too.

The helper is trusted no more than it needs to be: what it sends back must be a code object
compiled under the block's file name, else the block is compiled here. If the helper cannot be
started or dies, every block is compiled here from then on, with one warning.
"""

from __future__ import annotations

import logging
import marshal
import os
import select
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import CodeType
from typing import Dict, Optional, Tuple

from ...errors import ConfigError
from ...runtime_env import ON_PYPY, usable_cpus
from . import flagprune
from .flagprune import prune_flag_locals

log = logging.getLogger("pyhv.accel.tcg.compiler")

_LENGTH = struct.Struct("<I")
# Replies kept for blocks that have not come back for them (a block dropped by a code write
# never does): beyond this the oldest go, and their blocks, if they do come back, compile here.
MAX_UNCLAIMED = 256
# The longest the vCPU waits for one reply, or to hand over a source, before it gives the helper
# up (a source compiles in about a millisecond).
REPLY_TIMEOUT = 30.0


def compile_block(source: str, filename: str) -> CodeType:
    """A block's code as every path makes it (here, the helper, the code cache): its dead flag
    locals pruned, then compiled without inheriting the caller's ``__future__`` flags, which
    would differ between this module and the helper."""
    return compile(prune_flag_locals(source), filename, "exec", dont_inherit=True)


def helper_wanted(translate_after: Optional[int], reproducible: bool) -> bool:
    """Whether a VM's software CPU compiles in a helper: PYHV_TCG_COMPILE_HELPER ``on``,
    ``off`` or ``auto``, the default: on CPython, where the process may use two CPUs or more,
    blocks are translated only once they ran a while, and the run need not repeat exactly (a
    block then goes translated at a moment the host's timing decides). PyPy translates 1,100
    blocks in the Debian boot, not 12,900, and its JIT's work on them is most of their cost:
    the helper took 1.1 s of translating off the vCPU there, within the noise of the boot."""
    setting = os.environ.get("PYHV_TCG_COMPILE_HELPER", "auto")
    if setting not in ("on", "off", "auto"):
        raise ConfigError(f"PYHV_TCG_COMPILE_HELPER={setting!r}: expected on, off or auto")
    if setting == "auto":
        return not ON_PYPY and bool(translate_after) and not reproducible and usable_cpus() >= 2
    return setting == "on" and translate_after is not None


# Run by the helper as ``python -I -c`` after flagprune.py's text: read (token, source, filename)
# frames, answer each with (token, marshalled code or b"", error text), as compile_block makes
# the code. It stops at the end of its input.
_HELPER_LOOP = r"""
import marshal, os, signal, struct, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for the VM; the helper ends with its input
L = struct.Struct("<I")
def read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data
while True:
    token, source, filename = marshal.loads(read(L.unpack(read(4))[0]))
    try:
        code = compile(prune_flag_locals(source), filename, "exec", dont_inherit=True)
        reply = (token, marshal.dumps(code), "")
    except Exception as err:
        reply = (token, b"", "%s: %s" % (type(err).__name__, err))
    frame = marshal.dumps(reply)
    frame = L.pack(len(frame)) + frame
    while frame:
        frame = frame[os.write(1, frame):]
"""


def _helper_script() -> str:
    return Path(flagprune.__file__).read_text() + _HELPER_LOOP


class CompileHelper:
    """A helper process that compiles block sources; tokens name the requests."""

    def __init__(self) -> None:
        self._process: Optional[subprocess.Popen] = None
        self._broken = False
        self._next_token = 0
        self._replies: Dict[int, Tuple[bytes, str]] = {}
        self._pending: Dict[int, str] = {}  # token -> file name, until its reply is read
        self._inbox = b""

    @property
    def available(self) -> bool:
        """False once the helper failed: compile in this process instead."""
        return not self._broken

    def _start(self) -> bool:
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-c", _helper_script()], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, bufsize=0, close_fds=True)
        except OSError as err:
            self._fail(f"cannot start it ({err})")
            return False
        os.set_blocking(self._process.stdout.fileno(), False)
        os.set_blocking(self._process.stdin.fileno(), False)
        return True

    def _fail(self, why: str) -> None:
        if not self._broken:
            log.warning("software CPU: the compile helper failed (%s); blocks are compiled in "
                        "the vCPU thread from now on", why)
        self._broken = True
        if self._process is not None:
            self._process.kill()
        self.close()

    def submit(self, source: str, filename: str) -> Optional[int]:
        """Send ``source`` to be compiled; its token, or None when the helper is unavailable."""
        if self._broken or (self._process is None and not self._start()):
            return None
        token = self._next_token
        self._next_token += 1
        frame = marshal.dumps((token, source, filename))
        if not self._send(_LENGTH.pack(len(frame)) + frame):
            return None
        self._pending[token] = filename
        return token

    def _send(self, frame: bytes) -> bool:
        # Both pipes are non-blocking and the replies are read while the request waits to
        # be written: the helper blocks on a full reply pipe, and then stops reading.
        fd_in, fd_out = self._process.stdin.fileno(), self._process.stdout.fileno()
        view = memoryview(frame)
        deadline = time.monotonic() + REPLY_TIMEOUT
        while view:
            try:
                view = view[os.write(fd_in, view):]
                continue
            except BlockingIOError:
                pass
            except OSError as err:
                self._fail(f"writing to it: {err}")
                return False
            if time.monotonic() > deadline:
                self._fail(f"it took no input for {REPLY_TIMEOUT} s")
                return False
            readable, _, _ = select.select([fd_out], [fd_in], [], 1.0)
            if readable and not self._read(None):
                return False
        return True

    def result(self, token: int, wait: bool = False) -> Tuple[bool, Optional[CodeType]]:
        """(done, code) for ``token``: (False, None) while it is being compiled (unless
        ``wait``), (True, None) when the caller must compile the source itself."""
        if token not in self._replies:
            self._read(wait_for=token if wait else None)
        reply = self._replies.pop(token, None)
        if reply is None:
            if self._broken or token not in self._pending:
                self._pending.pop(token, None)
                return True, None
            return False, None
        filename = self._pending.pop(token)
        blob, error = reply
        if error:
            return True, None  # compiled here again, so the error is raised where it belongs
        try:
            code = marshal.loads(blob)
        except (EOFError, ValueError, TypeError):
            code = None
        if not isinstance(code, CodeType) or code.co_filename != filename:
            self._fail("it sent back something other than the block's code")
            return True, None
        return True, code

    def _read(self, wait_for: Optional[int]) -> bool:
        """Read the replies that have arrived (blocking until ``wait_for``'s has, if given)."""
        if self._process is None:
            return False
        fd = self._process.stdout.fileno()
        deadline: Optional[float] = None
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                chunk = None
            except OSError as err:
                self._fail(f"reading from it: {err}")
                return False
            if chunk == b"":
                self._fail("it exited")
                return False
            if chunk:
                self._inbox += chunk
                if not self._unpack():
                    return False
            if wait_for is None or wait_for in self._replies or wait_for not in self._pending:
                return True
            if deadline is None:
                deadline = time.monotonic() + REPLY_TIMEOUT
            elif time.monotonic() > deadline:
                self._fail(f"no reply in {REPLY_TIMEOUT} s")
                return False
            select.select([fd], [], [], 1.0)

    def _unpack(self) -> bool:
        inbox = self._inbox
        while len(inbox) >= 4:
            (size,) = _LENGTH.unpack_from(inbox)
            if len(inbox) < 4 + size:
                break
            try:
                token, blob, error = marshal.loads(inbox[4:4 + size])
            except (EOFError, ValueError, TypeError):
                token = blob = error = None
            if not (isinstance(token, int) and isinstance(blob, bytes) and isinstance(error, str)):
                self._fail("it sent back a malformed reply")
                return False
            inbox = inbox[4 + size:]
            if token in self._pending:
                self._replies[token] = (blob, error)
                if len(self._replies) > MAX_UNCLAIMED:
                    oldest = next(iter(self._replies))
                    del self._replies[oldest], self._pending[oldest]
        self._inbox = inbox
        return True

    def close(self) -> None:
        """Stop the helper; any block still waiting for its code compiles here."""
        self._broken = True
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

"""Translating blocks in a helper process, beside the vCPU.

On CPython, generating a block's source (0.4 ms) and ``compile()`` of it (1.1 ms) were nearly
all of what translating it cost; the Debian boot translates 12,900 blocks. Both hold the GIL, so
a thread cannot run them beside the vCPU. A helper process can, on another core: the vCPU hands
it the block's decoded instructions (``pickle``; an instruction names its decoder spec by index)
and keeps interpreting the block until the code comes back (``marshal``, as ``__pycache__``
stores code), as JIT compilers compile in the background while the interpreter goes on. The
helper runs the same Python and the same pyhv: it generates the source as
:func:`.translate.generate_block` does here and compiles it with :func:`compile_block`, or
takes the code from its read-only copy of the code cache (.codecache). What comes back is the
code, the names of the block's constants, which the vCPU rebuilds from its own instructions
(:func:`.translate.block_consts`), and the code cache entry, which the vCPU keeps for the next
boot.

The helper is trusted no more than it needs to be: what it sends back must be a code object
compiled under the block's file name, with constants the block can have, else the block is
translated here. If the helper cannot be started or dies, every block is translated here from
then on, with one warning.
"""

from __future__ import annotations

import logging
import marshal
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import CodeType
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from ...errors import ConfigError
from ...runtime_env import ON_PYPY, usable_cpus
from .decoder import SPECS, Insn
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


class HelperCode(NamedTuple):
    """A block the helper translated: its code, the names of its constants (see
    :func:`.translate.block_consts`), and its code cache entry (``new``: compiled in this boot,
    not found in the cache)."""
    code: CodeType
    names: Tuple[str, ...]
    key: bytes
    blob: bytes
    new: bool


def serve(cache_path: str, specs: int) -> None:
    """The helper's loop (``python -I -c``): read (token, parts, bits, low_end) frames, answer
    each with (token, marshalled code or b"", error text, constant names, cache key, new). It
    stops at the end of its input, or at once if its decoder table differs from the vCPU's
    (``specs`` entries), which would make the instructions it reads name other specs."""
    from .codecache import CodeCache
    from .translate import generate_block
    from .translate_insns import EMITTERS

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for the VM; the helper ends with its input
    if len(SPECS) != specs:
        sys.exit(f"pyhv compile helper: {len(SPECS)} decoder specs here, {specs} in the vCPU")
    replies = os.dup(1)
    os.dup2(2, 1)  # whatever prints must not land among the replies
    # Entries are named even without a file to read: the vCPU's cache keeps them for the next boot.
    cache = CodeCache(Path(cache_path) if cache_path else None)

    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(0, n - len(data))
            if not chunk:
                sys.exit(0)
            data += chunk
        return data

    while True:
        token, parts, bits, low_end = pickle.loads(read(_LENGTH.unpack(read(4))[0]))
        try:
            source, filename, consts = generate_block(parts, bits, low_end, EMITTERS)
            key, blob, new = cache.entry(source, filename)
            reply = (token, blob, "", tuple(consts), key, new)
        except Exception as err:  # the vCPU translates it again, and meets the error there
            reply = (token, b"", f"{type(err).__name__}: {err}", (), b"", False)
        frame = _encode_reply(reply)
        frame = _LENGTH.pack(len(frame)) + frame
        while frame:
            frame = frame[os.write(replies, frame):]


def _encode_reply(reply: tuple) -> bytes:
    return marshal.dumps(reply)


class CompileHelper:
    """A helper process that translates blocks; tokens name the requests. ``cache_path``: a
    code cache file (.codecache) the helper reads its code from where it can."""

    def __init__(self, cache_path: Optional[Path] = None) -> None:
        self._cache_path = str(cache_path) if cache_path is not None else ""
        self._process: Optional[subprocess.Popen] = None
        self._broken = False
        self._next_token = 0
        self._replies: Dict[int, Tuple[bytes, str, Tuple[str, ...], bytes, bool]] = {}
        self._pending: Dict[int, str] = {}  # token -> file name, until its reply is read
        self._inbox = b""

    def in_flight(self) -> int:
        """Blocks sent whose code has not come back yet (reading what has)."""
        if self._pending:
            self._read(None)
        return len(self._pending) - len(self._replies)

    @property
    def available(self) -> bool:
        """False once the helper failed: translate in this process instead."""
        return not self._broken

    def start(self) -> bool:
        """Start the helper now (it imports pyhv first), rather than at the first block."""
        if self._process is not None or self._broken:
            return not self._broken
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-c", self._script()], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, bufsize=0, close_fds=True)
        except OSError as err:
            self.fail(f"cannot start it ({err})")
            return False
        os.set_blocking(self._process.stdout.fileno(), False)
        os.set_blocking(self._process.stdin.fileno(), False)
        return True

    def _script(self) -> str:
        """What the helper runs: this pyhv's :func:`serve`, wherever it was imported from."""
        package_parent = str(Path(__file__).resolve().parents[3])
        return (f"import sys; sys.path.insert(0, {package_parent!r})\n"
                f"from pyhv.accel.tcg.compiler import serve; serve({self._cache_path!r}, {len(SPECS)})\n")

    def fail(self, why: str) -> None:
        """Give the helper up, with one warning: every block is translated here from now on."""
        if not self._broken:
            log.warning("software CPU: the compile helper failed (%s); blocks are translated in "
                        "the vCPU thread from now on", why)
        self._broken = True
        if self._process is not None:
            self._process.kill()
        self.close()

    def submit(self, parts: Sequence[List[Insn]], bits: int, low_end: int,
               filename: str) -> Optional[int]:
        """Send a region's instructions to be translated, as the code of ``filename``; its
        token, or None when the helper is unavailable or they cannot be sent."""
        if self._broken or (self._process is None and not self.start()):
            return None
        token = self._next_token
        try:
            frame = pickle.dumps((token, parts, bits, low_end), 5)
        except (pickle.PicklingError, AttributeError, TypeError):
            return None  # a handler pickle cannot name: this block is translated here
        self._next_token += 1
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
                self.fail(f"writing to it: {err}")
                return False
            if time.monotonic() > deadline:
                self.fail(f"it took no input for {REPLY_TIMEOUT} s")
                return False
            readable, _, _ = select.select([fd_out], [fd_in], [], 1.0)
            if readable and not self._read(None):
                return False
        return True

    def result(self, token: int, wait: bool = False) -> Tuple[bool, Optional[HelperCode]]:
        """(done, translated) for ``token``: (False, None) while it is being translated (unless
        ``wait``), (True, None) when the caller must translate the block itself."""
        if token not in self._replies:
            self._read(wait_for=token if wait else None)
        reply = self._replies.pop(token, None)
        if reply is None:
            if self._broken or token not in self._pending:
                self._pending.pop(token, None)
                return True, None
            return False, None
        filename = self._pending.pop(token)
        blob, error, names, key, new = reply
        if error:
            return True, None  # translated here again, so the error is raised where it belongs
        try:
            code = marshal.loads(blob)
        except (EOFError, ValueError, TypeError):
            code = None
        if not isinstance(code, CodeType) or code.co_filename != filename:
            self.fail("it sent back something other than the block's code")
            return True, None
        return True, HelperCode(code, names, key, blob, new)

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
                self.fail(f"reading from it: {err}")
                return False
            if chunk == b"":
                self.fail("it exited")
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
                self.fail(f"no reply in {REPLY_TIMEOUT} s")
                return False
            select.select([fd], [], [], 1.0)

    def _unpack(self) -> bool:
        inbox = self._inbox
        while len(inbox) >= 4:
            (size,) = _LENGTH.unpack_from(inbox)
            if len(inbox) < 4 + size:
                break
            try:
                token, blob, error, names, key, new = marshal.loads(inbox[4:4 + size])
            except (EOFError, ValueError, TypeError):
                token = blob = error = names = key = new = None
            if not (isinstance(token, int) and isinstance(blob, bytes) and isinstance(error, str)
                    and isinstance(names, tuple) and all(isinstance(name, str) for name in names)
                    and isinstance(key, bytes) and isinstance(new, bool)):
                self.fail("it sent back a malformed reply")
                return False
            inbox = inbox[4 + size:]
            if token in self._pending:
                self._replies[token] = (blob, error, names, key, new)
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

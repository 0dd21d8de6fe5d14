"""Linux kernel panics read off the serial console.

The pvpanic device (:mod:`pyhv.devices.pvpanic`) ends the VM when a kernel panics, but only
once the guest's pvpanic driver is loaded. In Debian's kernel that driver is a module, and a
module comes from the initramfs, so the panics a kernel developer meets first (no root to
mount, no init to run, a driver's init gone wrong) happen before it: the kernel prints the
panic on its console, and then, with ``panic=-1``, resets the machine, which under
``-no-reboot`` would end the VM with status 0, as a clean reboot does; with ``panic=0`` (the
kernel's default) it stops for good and the VM would run on, doing nothing.

So each serial port's output passes a :class:`PanicWatch`. It looks for the line every Linux
kernel prints first when it panics, at the emergency log level that ``quiet`` still shows::

    [    1.930832] Kernel panic - not syncing: No working init found. ...

and notes the reason in :attr:`Lifecycle.guest_panic`; the run loop's caller then reports a
reset that follows as the panic it is. The last line of a panic the kernel does not reboot
from, ``---[ end Kernel panic - not syncing: REASON ]---``, ends the VM at once with the
pvpanic device's status. Only whole lines count, beginning with the text or with the kernel's
timestamp before it, so a program that prints the phrase inside other output is not taken for
a panic (one that prints the kernel's exact line and then reboots is).
"""

from __future__ import annotations

import re
from typing import Optional

from .devices.pvpanic import PANIC_EXIT_STATUS, PANIC_REASON
from .devices.serial import CharSink
from .lifecycle import Lifecycle

# A printk line as the console shows it: the "[ seconds.micros] " timestamp first, if the kernel
# prints one (CONFIG_PRINTK_TIME), with the "[ T1]" caller id after it if it prints that too.
_PREFIX = rb"^(?:\[\s*\d+\.\d+\](?:\[\s*[CT]\d+\])? )?"
_PANIC_LINE = re.compile(_PREFIX + rb"Kernel panic - not syncing: (.*)$")
_END_LINE = re.compile(_PREFIX + rb"---\[ end Kernel panic - not syncing: (.*) \]---$")
# Longer lines are not the kernel's (it formats a panic's reason into 1,024 bytes): their rest
# is skipped.
MAX_LINE = 4096


class PanicWatch:
    """Passes a serial port's output on to ``sink`` and reads it for a kernel panic."""

    def __init__(self, sink: CharSink, lifecycle: Lifecycle) -> None:
        self._sink = sink
        self._lifecycle = lifecycle
        self._line = bytearray()
        self._overlong = False

    def write(self, data: bytes) -> None:
        self._sink.write(data)
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._take(data[start:])
                return
            self._take(data[start:end])
            if not self._overlong:
                self._check(bytes(self._line).rstrip(b"\r"))
            self._line.clear()
            self._overlong = False
            start = end + 1

    def _take(self, piece: bytes) -> None:
        if self._overlong or not piece:
            return
        if len(self._line) + len(piece) > MAX_LINE:
            self._overlong = True
            return
        self._line += piece

    def _check(self, line: bytes) -> None:
        if b"Kernel panic - not syncing: " not in line:  # the cheap test first: most lines
            return
        ended = _END_LINE.match(line)
        found = ended or _PANIC_LINE.match(line)
        if found is None:
            return
        reason = found.group(1).decode("utf-8", "replace").strip() or "no reason given"
        self._lifecycle.note_guest_panic(reason)
        if ended is not None:
            self._lifecycle.shutdown(PANIC_EXIT_STATUS, panic_message(reason))


def panic_message(reason: Optional[str]) -> str:
    """How pyhv reports a guest kernel panic: the pvpanic device's words, and the kernel's
    reason where the console gave it."""
    return f"{PANIC_REASON}: {reason}" if reason else PANIC_REASON

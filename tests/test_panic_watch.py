"""pyhv.panic_watch: a kernel panic read off the serial console, line by line."""

from __future__ import annotations

from typing import List

from pyhv.devices.pvpanic import PANIC_EXIT_STATUS
from pyhv.lifecycle import Lifecycle, Shutdown
from pyhv.panic_watch import MAX_LINE, PanicWatch, panic_message

PANIC_LINE = b"[    1.930832] Kernel panic - not syncing: No working init found.  Try passing init= option\r\n"
END_LINE = b"[    1.931000] ---[ end Kernel panic - not syncing: No working init found.  Try passing init= option ]---\r\n"
REASON = "No working init found.  Try passing init= option"


class Recorder:
    def __init__(self) -> None:
        self.chunks: List[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


def _watch():
    sink, lifecycle = Recorder(), Lifecycle()
    return PanicWatch(sink, lifecycle), sink, lifecycle


def test_the_panic_line_is_noted_and_everything_passes_through():
    watch, sink, lifecycle = _watch()
    for byte in b"Run /init as init process\r\n" + PANIC_LINE:  # as the UART sends it, a byte at a time
        watch.write(bytes((byte,)))
    assert b"".join(sink.chunks) == b"Run /init as init process\r\n" + PANIC_LINE
    assert lifecycle.guest_panic == REASON
    assert lifecycle.pending is None  # panic=-1 resets next, which the caller reports


def test_the_end_of_panic_line_ends_the_vm_with_the_reason():
    watch, _sink, lifecycle = _watch()
    watch.write(PANIC_LINE + b"[    1.930900] Call Trace:\r\n" + END_LINE)
    assert lifecycle.pending == Shutdown(PANIC_EXIT_STATUS, "guest kernel panicked: " + REASON)
    assert panic_message(lifecycle.guest_panic) == "guest kernel panicked: " + REASON
    assert panic_message(None) == "guest kernel panicked"


def test_without_timestamps_and_without_a_reason():
    watch, _sink, lifecycle = _watch()
    watch.write(b"Kernel panic - not syncing: \n")
    assert lifecycle.guest_panic == "no reason given"


def test_the_phrase_inside_other_output_or_an_unfinished_line_is_no_panic():
    watch, _sink, lifecycle = _watch()
    watch.write(b"$ grep 'Kernel panic - not syncing: ' dmesg.txt\n")
    watch.write(b"log: ---[ end Kernel panic - not syncing: x ]---\n")
    watch.write(PANIC_LINE.rstrip(b"\r\n"))  # no newline yet
    assert lifecycle.guest_panic is None and lifecycle.pending is None
    watch.write(b"\n")
    assert lifecycle.guest_panic == REASON


def test_an_overlong_line_is_skipped_whole_and_the_next_one_read():
    watch, _sink, lifecycle = _watch()
    watch.write(b"x" * (MAX_LINE + 10))
    watch.write(PANIC_LINE)  # the rest of the overlong line: not read as a panic
    assert lifecycle.guest_panic is None
    watch.write(PANIC_LINE)
    assert lifecycle.guest_panic == REASON


def test_the_first_reason_is_kept():
    watch, _sink, lifecycle = _watch()
    watch.write(PANIC_LINE + b"Kernel panic - not syncing: a second one\n")
    assert lifecycle.guest_panic == REASON


def test_a_caller_id_after_the_timestamp_and_a_long_reason():
    watch, _sink, lifecycle = _watch()
    reason = "x" * 1023  # the kernel formats the reason into 1,024 bytes
    watch.write(b"[    1.930832][    T1] Kernel panic - not syncing: " + reason.encode() + b"\r\n")
    assert lifecycle.guest_panic == reason

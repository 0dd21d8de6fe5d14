"""pvpanic: the guest reads the events the device knows and writes the one that happened."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pyhv.bus import Bus
from pyhv.devices.pvpanic import CRASH_LOADED, DEFAULT_IOPORT, IOPORT_LEN, PANIC_EXIT_STATUS, PANICKED, PvPanic
from pyhv.lifecycle import Lifecycle, Shutdown


def attached() -> "tuple[Bus, Lifecycle, PvPanic]":
    lifecycle = Lifecycle()
    device = PvPanic(lifecycle)
    bus = Bus("pio")
    bus.attach(DEFAULT_IOPORT, IOPORT_LEN, device)
    return bus, lifecycle, device


def test_read_lists_panicked_and_crash_loaded_as_qemu_7_does() -> None:
    bus, _, _ = attached()
    assert bus.read(DEFAULT_IOPORT, 1) == PANICKED | CRASH_LOADED == 0b11


def test_panicked_ends_the_vm_with_a_failure_status_and_a_message() -> None:
    bus, lifecycle, device = attached()
    bus.write(DEFAULT_IOPORT, 1, PANICKED)
    assert isinstance(lifecycle.pending, Shutdown)
    assert lifecycle.pending.status != 0
    assert "guest kernel panicked" in lifecycle.pending.reason
    assert device.events == [PANICKED]


def test_crash_loaded_is_recorded_and_the_guest_keeps_running() -> None:
    bus, lifecycle, device = attached()
    bus.write(DEFAULT_IOPORT, 1, CRASH_LOADED)
    assert lifecycle.pending is None
    assert device.events == [CRASH_LOADED]


@pytest.mark.parametrize("value", [0, 0x04, 0xF8])
def test_unknown_bits_alone_do_nothing(value: int) -> None:
    bus, lifecycle, device = attached()
    bus.write(DEFAULT_IOPORT, 1, value)
    assert lifecycle.pending is None and device.events == []


def test_unknown_bits_next_to_panicked_are_ignored() -> None:
    bus, lifecycle, device = attached()
    bus.write(DEFAULT_IOPORT, 1, 0xFD)
    assert device.events == [PANICKED]
    assert isinstance(lifecycle.pending, Shutdown)


def test_a_later_reset_keeps_the_panic_status() -> None:
    # panic=-1 resets the machine right after the notifier wrote the event.
    bus, lifecycle, _ = attached()
    bus.write(DEFAULT_IOPORT, 1, PANICKED)
    lifecycle.reset("i8042 reset line")
    assert isinstance(lifecycle.pending, Shutdown)


def multiboot_image(code: bytes) -> bytes:
    """A multiboot (a.out kludge) kernel at 1 MiB whose 32-bit entry runs ``code``."""
    magic, flags, load = 0x1BADB002, 1 << 16, 0x100000
    header_size = 48
    fields = [magic, flags, -(magic + flags) & 0xFFFFFFFF, load, load, 0, 0, load + header_size, 0, 0, 0, 0]
    return struct.pack("<12I", *fields) + code


@pytest.mark.parametrize("event,status,message", [(PANICKED, PANIC_EXIT_STATUS, True), (CRASH_LOADED, 0xFF, False)])
def test_pyhv_run_says_the_guest_panicked_and_fails(tmp_path: Path, event: int, status: int, message: bool) -> None:
    # mov dx, 0x505; mov al, event; out dx, al; then power off through isa-debug-exit at 0xf4
    # with 0x7f, status 0xff, which only a guest that kept running reaches.
    code = bytes([0x66, 0xBA, 0x05, 0x05, 0xB0, event, 0xEE,
                  0x66, 0xBA, 0xF4, 0x00, 0xB0, 0x7F, 0xEE, 0xFA, 0xF4])
    kernel = tmp_path / "panic.mb"
    kernel.write_bytes(multiboot_image(code))
    result = subprocess.run([sys.executable, "-m", "pyhv", "run", "-accel", "tcg", "-m", "16", "-nographic",
                             "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-kernel", str(kernel)],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert ("pyhv: guest kernel panicked" in result.stderr) == message, result.stderr
    assert result.returncode == status, result.stderr

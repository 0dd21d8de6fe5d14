"""Chardev back-ends across a reset: file and socket back-ends live on in the caller's keeping
(a log is not truncated, a console client stays connected), as in QEMU; stdio is per machine."""

from __future__ import annotations

import socket
import time

import pytest

from pyhv.machine import Machine
from pyhv.qemu_args import parse_run_args

COM1 = 0x3F8


def _machine(guest_path, serial: str, kept) -> Machine:
    config = parse_run_args(["-accel", "tcg", "-m", "16", "-serial", serial,
                             "-kernel", str(guest_path("hello"))])
    return Machine(config, notice=lambda message: None, kept_chardevs=kept)


def _type(machine: Machine, text: bytes) -> None:
    for byte in text:
        machine.pio.write(COM1, 1, byte)  # the UART's transmit register


def test_a_serial_log_file_goes_on_across_a_rebuilt_machine(guest_path, tmp_path):
    log = tmp_path / "console.log"
    kept = {}
    first = _machine(guest_path, f"file:{log}", kept)
    _type(first, b"first boot\n")
    first.close()
    second = _machine(guest_path, f"file:{log}", kept)
    assert second.backends == [] and list(kept) == [f"file:{log}"]
    _type(second, b"second boot\n")
    second.close()
    for backend in kept.values():
        backend.close()
    assert log.read_bytes() == b"first boot\nsecond boot\n"


def test_a_console_client_stays_connected_across_a_rebuilt_machine(guest_path, tmp_path):
    path = tmp_path / "console.sock"
    spec = f"unix:{path},server,nowait"
    kept = {}
    first = _machine(guest_path, spec, kept)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    client.settimeout(5)
    try:
        deadline = time.monotonic() + 5
        while not kept[spec].connected and time.monotonic() < deadline:
            time.sleep(0.01)
        _type(first, b"before ")
        first.close()
        second = _machine(guest_path, spec, kept)
        _type(second, b"after\n")
        received = b""
        while not received.endswith(b"after\n"):
            chunk = client.recv(100)
            assert chunk, f"the console connection was closed; got {received!r}"
            received += chunk
        assert received == b"before after\n"
        second.close()
    finally:
        client.close()
        for backend in kept.values():
            backend.close()


def test_without_kept_chardevs_the_machine_closes_what_it_opened(guest_path, tmp_path):
    machine = _machine(guest_path, f"file:{tmp_path / 'log'}", None)
    assert len(machine.backends) == 1
    machine.close()
    assert machine.backends == []

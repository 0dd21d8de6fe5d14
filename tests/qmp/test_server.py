"""The QMP server against the real qemu.qmp client (PyPI), with a fake VM behind it."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Dict, List

import pytest

from pyhv.qmp.commands import GENERIC_ERROR, QmpError, format_registers
from pyhv.qmp.server import QmpServer

qmp = pytest.importorskip("qemu.qmp", reason="the qemu.qmp client (PyPI) drives these tests")


class FakeVm:
    """A VmControl that records what was asked of it."""

    def __init__(self, has_acpi: bool = True) -> None:
        self.name = "fake"
        self.paused = False
        self.calls: List[str] = []
        self.has_acpi = has_acpi

    def status(self) -> str:
        return "paused" if self.paused else "running"

    def pause(self) -> None:
        self.calls.append("pause")
        self.paused = True

    def resume(self) -> None:
        self.calls.append("resume")
        self.paused = False

    def powerdown(self) -> None:
        if not self.has_acpi:
            raise QmpError(GENERIC_ERROR, "this machine has no ACPI power button")
        self.calls.append("powerdown")

    def reset(self) -> None:
        self.calls.append("reset")

    def reboot(self) -> None:
        self.powerdown()
        self.calls.append("reboot")

    def quit(self) -> None:
        self.calls.append("quit")

    def registers(self) -> Dict[str, int]:
        return {"rax": 0x1234, "rip": 0x100000, "cs": 8, "cr0": 0x11}

    def vcpu_thread_id(self) -> int:
        return 4242


@pytest.fixture
def server(tmp_path):
    vm = FakeVm()
    srv = QmpServer(str(tmp_path / "qmp.sock"), vm)
    srv.start()
    yield srv, vm
    srv.close()


def _legacy(path: str):
    from qemu.qmp.legacy import QEMUMonitorProtocol

    # The legacy client runs its own loop on the current one; an earlier asyncio.run() left none.
    asyncio.set_event_loop(asyncio.new_event_loop())
    client = QEMUMonitorProtocol(path)
    client.connect(negotiate=True)
    return client


def test_queries_through_qemu_qmp(server):
    srv, vm = server
    client = _legacy(srv.path)
    try:
        assert client.cmd("query-status") == {"status": "running", "singlestep": False, "running": True}
        assert client.cmd("query-name") == {"name": "fake"}
        version = client.cmd("query-version")
        assert version["qemu"]["major"] == 7 and version["package"].startswith("pyhv")
        names = {c["name"] for c in client.cmd("query-commands")}
        assert {"qmp_capabilities", "stop", "cont", "quit", "human-monitor-command", "query-cpus-fast"} <= names
        cpus = client.cmd("query-cpus-fast")
        assert cpus[0]["cpu-index"] == 0 and cpus[0]["thread-id"] == 4242
        text = client.cmd("human-monitor-command", **{"command-line": "info registers"})
        assert "RAX=0000000000001234" in text and "RIP=0000000000100000" in text
        assert client.cmd("human-monitor-command", **{"command-line": "info status"}) == "VM status: running\r\n"
    finally:
        client.close()


def test_stop_cont_events_async_client(server):
    srv, vm = server

    async def scenario():
        client = qmp.QMPClient("test")
        await client.connect(srv.path)
        with client.listener() as listener:
            await client.execute("stop")
            stop = await asyncio.wait_for(listener.get(), 5)
            assert (await client.execute("query-status"))["status"] == "paused"
            await client.execute("cont")
            resume = await asyncio.wait_for(listener.get(), 5)
            await client.execute("system_powerdown")
            powerdown = await asyncio.wait_for(listener.get(), 5)
        with pytest.raises(qmp.ExecuteError) as info:
            await client.execute("no-such-command")
        await client.disconnect()
        return stop, resume, powerdown, info.value

    stop, resume, powerdown, error = asyncio.run(scenario())
    assert [stop["event"], resume["event"], powerdown["event"]] == ["STOP", "RESUME", "POWERDOWN"]
    assert set(stop["timestamp"]) == {"seconds", "microseconds"} and stop["timestamp"]["seconds"] > 1_600_000_000
    assert vm.calls == ["pause", "resume", "powerdown"]
    assert error.error_class == "CommandNotFound"


def test_quit_replies_before_shutdown_is_sent(server):
    srv, vm = server
    client = _legacy(srv.path)
    try:
        assert client.cmd_raw("quit") == {"return": {}}
        srv.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        event = client.pull_event(wait=5.0)
        assert event["event"] == "SHUTDOWN" and event["data"]["reason"] == "host-qmp-quit"
        assert vm.calls == ["quit"]
    finally:
        client.close()


def test_powerdown_without_acpi_is_a_qmp_error(tmp_path):
    srv = QmpServer(str(tmp_path / "q.sock"), FakeVm(has_acpi=False))
    srv.start()
    client = _legacy(srv.path)
    try:
        reply = client.cmd_raw("system_powerdown")
        assert reply["error"]["class"] == "GenericError" and "ACPI" in reply["error"]["desc"]
    finally:
        client.close()
        srv.close()


def test_guest_reboot_presses_the_button_and_says_powerdown(server):
    srv, vm = server
    client = _legacy(srv.path)
    try:
        assert client.cmd_raw("x-guest-reboot") == {"return": {}}
        assert client.pull_event(wait=5.0)["event"] == "POWERDOWN"
        assert vm.calls == ["powerdown", "reboot"]
        names = {entry["name"] for entry in client.cmd_raw("query-commands")["return"]}
        assert "x-guest-reboot" in names
    finally:
        client.close()


def _raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.settimeout(5)
    return sock


def _lines(sock: socket.socket, count: int) -> List[dict]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return [json.loads(line) for line in data.splitlines()[:count]]


def test_protocol_errors_raw(server):
    srv, _vm = server
    sock = _raw(srv.path)
    try:
        greeting = _lines(sock, 1)[0]
        assert greeting["QMP"]["capabilities"] == [] and greeting["QMP"]["version"]["qemu"]["minor"] == 2
        sock.sendall(b'{"execute": "query-status", "id": 1}\n')
        assert _lines(sock, 1)[0] == {"error": {"class": "CommandNotFound", "desc":
                                               "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 1}
        # One object split over two writes, then the negotiation.
        sock.sendall(b'{"execute": "qmp_capa')
        sock.sendall(b'bilities", "id": "n"}\n')
        assert _lines(sock, 1)[0] == {"return": {}, "id": "n"}
        sock.sendall(b'{"execute": "qmp_capabilities"}\n[1, 2]\n{"arguments": {}}\n{"execute": "stop", "x": 1}\n'
                     b'{"execute": "human-monitor-command"}\n{bad json}\n{"execute": "query-name"}\n')
        replies = _lines(sock, 7)
        assert replies[0]["error"]["class"] == "CommandNotFound"
        assert replies[1]["error"]["desc"] == "QMP input must be a JSON object"
        assert replies[2]["error"]["desc"] == "QMP input lacks member 'execute'"
        assert replies[3]["error"]["desc"] == "QMP input member 'x' is unexpected"
        assert replies[4]["error"]["desc"] == "Parameter 'command-line' is missing"
        assert replies[5]["error"]["desc"].startswith("JSON parse error")
        assert replies[6] == {"return": {"name": "fake"}}
    finally:
        sock.close()


def test_events_go_only_to_negotiated_clients(server):
    srv, _vm = server
    waiting = _raw(srv.path)
    ready = _raw(srv.path)
    try:
        _lines(waiting, 1)
        _lines(ready, 1)
        ready.sendall(b'{"execute": "qmp_capabilities"}\n')
        _lines(ready, 1)
        srv.emit("RESET", {"guest": True, "reason": "guest-reset"})
        assert _lines(ready, 1)[0]["event"] == "RESET"
        waiting.settimeout(0.2)
        with pytest.raises(socket.timeout):
            waiting.recv(100)
    finally:
        waiting.close()
        ready.close()


def test_format_registers_layout():
    text = format_registers({"rax": 1, "r8": 2, "rflags": 0x202, "cs": 0x10, "efer": 0x500})
    lines = text.split("\r\n")
    assert lines[0].startswith("RAX=0000000000000001 RBX=0000000000000000")
    assert lines[2].startswith("R8 =0000000000000002")
    assert "RFL=00000202" in text and "CS =0010" in text and "EFER=0000000000000500" in text

"""`pyhv virsh` against a temporary store: bad input leaves the store unchanged; a real guest end to end."""

from __future__ import annotations

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pyhv.virt.virsh import format_table


def _snapshot(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.xml"))}


def test_list_table_matches_virsh_layout():
    assert format_table(["Id", "Name", "State"], [["-", "demo", "shut off"]]) == (
        " Id   Name   State\n-----------------------\n -    demo   shut off\n")


def test_define_list_dominfo_undefine(virsh, store_env, make_domain, tmp_path):
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\0")
    (tmp_path / "d.xml").write_text(make_domain("web", kernel))
    done = virsh(["define", str(tmp_path / "d.xml")])
    assert done.returncode == 0 and b"Domain 'web' defined from" in done.stdout, done.stderr
    assert virsh(["list", "--all", "--name"]).stdout == b"web\n\n"
    info = virsh(["dominfo", "web"]).stdout.decode()
    assert "State:          shut off" in info and "Max memory:     32768 KiB" in info
    assert virsh(["autostart", "web"]).returncode == 0
    assert os.readlink(store_env["config"] / "autostart" / "web.xml") == "../web.xml"
    assert "Autostart:      enable" in virsh(["dominfo", "web"]).stdout.decode()
    dumped = virsh(["dumpxml", "web"]).stdout.decode()
    assert "<uuid>" in dumped and "<memory unit='KiB'>32768</memory>" in dumped
    assert virsh(["undefine", "web"]).returncode == 0
    assert _snapshot(store_env["config"]) == {} and not (store_env["config"] / "autostart" / "web.xml").exists()


@pytest.mark.parametrize("case", ["malformed", "unknown", "missing-kernel", "dup-uuid", "dup-name"])
def test_bad_define_leaves_store_unchanged(case, virsh, store_env, make_domain, tmp_path):
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\0")
    (tmp_path / "a.xml").write_text(make_domain("a", kernel).replace("<name>", "<uuid>11111111-2222-3333-4444-"
                                                                      "555555555555</uuid><name>"))
    assert virsh(["define", str(tmp_path / "a.xml")]).returncode == 0
    before = _snapshot(store_env["config"])
    text = {
        "malformed": "<domain type='kvm'>\n  <name>b</name\n</domain>",
        "unknown": make_domain("b", kernel, extra="    <graphics type='vnc'/>\n"),
        "missing-kernel": make_domain("b", tmp_path / "no-kernel"),
        "dup-uuid": (tmp_path / "a.xml").read_text().replace("<name>a</name>", "<name>b</name>"),
        "dup-name": make_domain("a", kernel).replace("<name>", "<uuid>99999999-2222-3333-4444-555555555555</uuid><name>"),
    }[case]
    (tmp_path / "b.xml").write_text(text)
    done = virsh(["define", str(tmp_path / "b.xml")])
    expected = {"malformed": b"malformed XML at line 3, column", "unknown": b"line 11: element <graphics>",
                "missing-kernel": b"kernel file", "dup-uuid": b"already has uuid",
                "dup-name": b"already exists with uuid"}[case]
    assert done.returncode != 0 and expected in done.stderr and done.stderr.startswith(b"error: "), done.stderr
    assert _snapshot(store_env["config"]) == before


def test_unknown_domain_and_command(virsh):
    assert b"failed to get domain 'ghost'" in virsh(["start", "ghost"]).stderr
    assert virsh(["frobnicate"]).returncode == 1
    assert b"unsupported connection URI" in virsh(["-c", "qemu:///system", "list"]).stderr


def _kvm():
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not usable here")


def _read_console(path: Path, needle: bytes, timeout: float = 20.0) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while data.count(needle) < 2 and time.monotonic() < deadline:
            data += sock.recv(4096)
    finally:
        sock.close()
    return data


def test_guest_end_to_end(virsh, store_env, make_domain, loop_kernel, tmp_path):
    _kvm()
    (tmp_path / "loop.xml").write_text(make_domain("loop", loop_kernel))
    assert virsh(["define", str(tmp_path / "loop.xml")]).returncode == 0
    started = virsh(["start", "loop"])
    assert started.returncode == 0, started.stderr
    listing = virsh(["list"]).stdout.decode()
    assert "loop   running" in listing and listing.splitlines()[2].split()[0].isdigit()
    assert b"alive\n" in _read_console(store_env["runtime"] / "loop.console", b"alive\n")
    again = virsh(["start", "loop"])
    assert again.returncode != 0 and b"already running" in again.stderr
    refused = virsh(["undefine", "loop"])
    assert refused.returncode != 0 and b"it is running" in refused.stderr
    assert virsh(["suspend", "loop"]).returncode == 0
    assert virsh(["domstate", "--reason", "loop"]).stdout == b"paused (user)\n\n"
    regs = virsh(["qemu-monitor-command", "loop", "--hmp", "info registers"]).stdout
    assert b"RIP=" in regs and b"CS =0008" in regs
    assert virsh(["resume", "loop"]).returncode == 0
    status = virsh(["qemu-monitor-command", "loop", '{"execute": "query-status"}']).stdout
    assert b'"running": true' in status
    # A virsh call that talks to the VM costs an interpreter start-up (about a second on a
    # loaded machine under PyPy); destroying must add less than a second to that.
    begin = time.monotonic()
    assert virsh(["domstate", "loop"]).returncode == 0
    startup = time.monotonic() - begin
    begin = time.monotonic()
    assert virsh(["destroy", "loop"]).returncode == 0
    assert time.monotonic() - begin < startup + 1.0
    assert "loop   shut off" in virsh(["list", "--all"]).stdout.decode()
    assert virsh(["domstate", "--reason", "loop"]).stdout == b"shut off (destroyed)\n\n"
    assert virsh(["undefine", "loop"]).returncode == 0


def test_killed_process_shows_crashed(virsh, store_env, make_domain, loop_kernel, tmp_path):
    _kvm()
    (tmp_path / "loop.xml").write_text(make_domain("k", loop_kernel))
    assert virsh(["define", str(tmp_path / "loop.xml")]).returncode == 0
    assert virsh(["start", "k"]).returncode == 0
    pid = int((store_env["runtime"] / "k.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and virsh(["domstate", "k"]).stdout != b"shut off\n\n":
        time.sleep(0.05)
    assert virsh(["domstate", "--reason", "k"]).stdout == b"shut off (crashed)\n\n"
    assert virsh(["start", "k"]).returncode == 0  # a crashed domain starts again
    assert virsh(["destroy", "k"]).returncode == 0


def _runner_processes(runtime_dir: Path) -> list:
    """VM processes serving this store, from /proc (ps truncates long command lines)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pyhv.virt.runner" in argv and str(runtime_dir).encode() in argv:
            found.append(int(entry.name))
    return found


def test_parallel_define_start_undefine_stay_consistent(virsh, store_env, make_domain, loop_kernel, tmp_path):
    _kvm()
    (tmp_path / "p.xml").write_text(make_domain("p", loop_kernel))
    assert virsh(["define", str(tmp_path / "p.xml")]).returncode == 0
    with ThreadPoolExecutor(max_workers=6) as pool:
        starts = list(pool.map(lambda _: virsh(["start", "p"]), range(4)))
    assert sum(r.returncode == 0 for r in starts) == 1, [r.stderr for r in starts]
    assert all(b"already running" in r.stderr for r in starts if r.returncode != 0)
    with ThreadPoolExecutor(max_workers=6) as pool:
        mixed = list(pool.map(lambda args: virsh(args), [["undefine", "p"], ["define", str(tmp_path / "p.xml")],
                                                          ["undefine", "p"], ["start", "p"]]))
    assert all(r.returncode != 0 for r in (mixed[0], mixed[2], mixed[3])), [r.stderr for r in mixed]
    assert virsh(["list", "--name"]).stdout == b"p\n\n"
    assert len(_runner_processes(store_env["runtime"])) == 1
    assert virsh(["destroy", "p"]).returncode == 0
    with ThreadPoolExecutor(max_workers=6) as pool:
        undefines = list(pool.map(lambda _: virsh(["undefine", "p"]), range(3)))
    assert sum(r.returncode == 0 for r in undefines) == 1
    assert _snapshot(store_env["config"]) == {}

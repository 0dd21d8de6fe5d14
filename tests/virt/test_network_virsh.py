"""`pyhv virsh net-*` against a temporary store, no host changes: output formats, and bad input leaves the
store unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NET = """<network>
  <name>{name}</name>
  {extra}
  <forward mode='nat'/>
  <ip address='10.{octet}.0.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='10.{octet}.0.10' end='10.{octet}.0.50'/>
    </dhcp>
  </ip>
</network>
"""
UUID_A = "6a1f1d0c-3b9e-4c1a-9d6e-0b0e3c5f7a11"


def _write(tmp_path: Path, file: str, name: str, octet: int = 77, extra: str = "") -> str:
    path = tmp_path / file
    path.write_text(NET.format(name=name, octet=octet, extra=extra))
    return str(path)


def _snapshot(store_env) -> dict:
    directory = store_env["config"] / "networks"
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.xml"))} if directory.is_dir() else {}


def test_define_list_info_dumpxml_autostart_undefine(virsh, store_env, tmp_path):
    path = _write(tmp_path, "a.xml", "alpha", extra=f"<uuid>{UUID_A}</uuid>")
    done = virsh(["net-define", path])
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == f"Network alpha defined from {path}\n\n"
    stored = (store_env["config"] / "networks" / "alpha.xml").read_text()
    bridge = re.search(r"<bridge name='(virbr\d+)' stp='on' delay='0'/>", stored).group(1)
    assert re.search(r"<mac address='52:54:00(:[0-9a-f]{2}){3}'/>", stored)
    assert virsh(["net-dumpxml", "alpha"]).stdout.decode() == stored
    assert virsh(["net-list"]).stdout.decode() == (
        " Name   State   Autostart   Persistent\n----------------------------------------\n\n")
    assert virsh(["net-list", "--all"]).stdout.decode() == (
        " Name    State      Autostart   Persistent\n"
        "--------------------------------------------\n"
        " alpha   inactive   no          yes\n\n")
    assert virsh(["net-list", "--inactive", "--name"]).stdout == b"alpha\n\n"
    assert virsh(["net-autostart", "alpha"]).stdout == b"Network alpha marked as autostarted\n\n"
    assert (store_env["config"] / "networks" / "autostart" / "alpha.xml").is_symlink()
    info = virsh(["net-info", UUID_A]).stdout.decode()  # by uuid, as virsh accepts
    assert info == (f"Name:           alpha\nUUID:           {UUID_A}\nActive:         no\nPersistent:     yes\n"
                    f"Autostart:      yes\nBridge:         {bridge}\n\n")
    assert virsh(["net-autostart", "--disable", "alpha"]).stdout == b"Network alpha unmarked as autostarted\n\n"
    assert "Autostart:      no" in virsh(["net-info", "alpha"]).stdout.decode()
    # A second network gets another bridge; a redefinition without uuid keeps uuid, bridge and MAC.
    assert virsh(["net-define", _write(tmp_path, "b.xml", "beta", 78)]).returncode == 0
    assert f"name='{bridge}'" not in (store_env["config"] / "networks" / "beta.xml").read_text()
    assert virsh(["net-define", _write(tmp_path, "a2.xml", "alpha", 79)]).returncode == 0
    again = (store_env["config"] / "networks" / "alpha.xml").read_text()
    assert UUID_A in again and f"name='{bridge}'" in again and "10.79.0.1" in again
    assert re.search(r"<mac address='[^']+'/>", again).group(0) == re.search(r"<mac address='[^']+'/>", stored).group(0)
    assert virsh(["net-undefine", "alpha"]).stdout == b"Network alpha has been undefined\n\n"
    assert list(_snapshot(store_env)) == ["beta.xml"]
    assert virsh(["list", "--all", "--name"]).stdout == b"\n"  # networks are no domains


@pytest.mark.parametrize("case", ["malformed", "invalid", "dup-uuid", "dup-name", "dup-bridge", "no-file"])
def test_bad_net_define_leaves_store_unchanged(case, virsh, store_env, tmp_path):
    assert virsh(["net-define", _write(tmp_path, "a.xml", "alpha", extra=f"<uuid>{UUID_A}</uuid>"
                                       "<bridge name='brA'/>")]).returncode == 0
    before = _snapshot(store_env)
    path = tmp_path / "b.xml"
    path.write_text({
        "malformed": "<network>\n  <name>b</name\n</network>",
        "invalid": NET.format(name="b", octet=77, extra="").replace("10.77.0.50", "10.78.0.50"),
        "dup-uuid": NET.format(name="b", octet=77, extra=f"<uuid>{UUID_A}</uuid>"),
        "dup-name": NET.format(name="alpha", octet=77, extra="<uuid>99999999-2222-3333-4444-555555555555</uuid>"),
        "dup-bridge": NET.format(name="b", octet=77, extra="<bridge name='brA'/>"),
        "no-file": "",
    }[case])
    if case == "no-file":
        path.unlink()
    done = virsh(["net-define", str(path)])
    expected = {"malformed": b"malformed XML at line 3, column", "invalid": b"line 7: <range>: range 10.77.0.10",
                "dup-uuid": b"network 'alpha' already has uuid", "dup-name": b"already exists with uuid",
                "dup-bridge": b"bridge name 'brA' is already used by network 'alpha'",
                "no-file": b"Failed to open file"}[case]
    assert done.returncode == 1 and done.stderr.startswith(b"error: ") and expected in done.stderr, done.stderr
    assert _snapshot(store_env) == before


@pytest.mark.parametrize("command", ["net-start", "net-destroy", "net-undefine", "net-info", "net-dumpxml",
                                     "net-autostart"])
def test_unknown_network(command, virsh):
    done = virsh([command, "ghost"])
    assert done.returncode == 1 and b"failed to get network 'ghost': no network with matching name" in done.stderr


def test_destroy_of_inactive_network_and_bad_arguments(virsh, store_env, tmp_path):
    assert virsh(["net-define", _write(tmp_path, "a.xml", "alpha")]).returncode == 0
    before = _snapshot(store_env)
    assert b"network is not active" in virsh(["net-destroy", "alpha"]).stderr
    assert b"doesn't support option --force" in virsh(["net-list", "--force"]).stderr
    assert b"takes 1 argument(s), got 0" in virsh(["net-start"]).stderr
    assert _snapshot(store_env) == before

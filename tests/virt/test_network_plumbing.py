"""Real plumbing, each test inside its own network namespace (`ip netns add`), so the host's interfaces are
never touched: net-start builds the bridge, address, dnsmasq and NAT table there; a domain's TAP devices
exist, are up and on their bridge while it runs, and vanish when it ends. Needs root; skips otherwise."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import List

import pytest

from pyhv.virt.netplumb import link_exists

WAIT_S = 10.0

NAT_NET = """<network>
  <name>{name}</name>
  <forward mode='nat'/>
  <bridge name='{bridge}'/>
  <ip address='10.{octet}.0.1' prefix='24'>
    <dhcp>
      <range start='10.{octet}.0.10' end='10.{octet}.0.50'/>
    </dhcp>
  </ip>
</network>
"""


@pytest.fixture
def netns():
    """A fresh network namespace with lo up; whatever the test left running in it is killed after."""
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces, bridges and TAP devices needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 ('ip') is not installed")
    name = f"pyhvtest-{uuid.uuid4().hex[:10]}"
    added = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if added.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {added.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:  # only processes started inside this test's namespace
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def in_ns(ns: str, args: List[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns] + args, capture_output=True, text=True, check=check,
                          timeout=30)


def virsh_in(ns: str, store_env: dict, args: List[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYHV_CONFIG_DIR=str(store_env["config"]), PYHV_RUNTIME_DIR=str(store_env["runtime"]))
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "pyhv.virt.virsh"] + args,
                          capture_output=True, text=True, env=env, timeout=120)


def link(ns: str, name: str):
    """``ip -json -details link show`` of ``name`` in ``ns``, or None if it does not exist."""
    done = in_ns(ns, ["ip", "-json", "-details", "link", "show", "dev", name], check=False)
    return json.loads(done.stdout)[0] if done.returncode == 0 else None


def addresses(ns: str, name: str) -> List[str]:
    done = in_ns(ns, ["ip", "-json", "address", "show", "dev", name])
    return [f"{a['local']}/{a['prefixlen']}" for a in json.loads(done.stdout)[0]["addr_info"]
            if a["family"] == "inet"]


def on_host(name: str) -> bool:
    """Whether the test's own (the host's) namespace has ``name``."""
    return link_exists(name)


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.05)


def define_network(ns, store_env, tmp_path, name="lan", bridge="pyhvbr0", octet=77) -> None:
    path = tmp_path / f"{name}.xml"
    path.write_text(NAT_NET.format(name=name, bridge=bridge, octet=octet))
    done = virsh_in(ns, store_env, ["net-define", str(path)])
    assert done.returncode == 0, done.stderr


def _command_line(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_net_start_builds_bridge_address_dnsmasq_and_nat(netns, store_env, tmp_path):
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (Debian package 'dnsmasq-base')")
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (Debian package 'nftables')")
    define_network(netns, store_env, tmp_path)
    stored = (store_env["config"] / "networks" / "lan.xml").read_text()
    mac = re.search(r"<mac address='([^']+)'/>", stored).group(1)
    done = virsh_in(netns, store_env, ["net-start", "lan"])
    assert done.returncode == 0 and done.stdout == "Network lan started\n\n", done.stderr
    bridge = link(netns, "pyhvbr0")
    assert bridge["linkinfo"]["info_kind"] == "bridge" and "UP" in bridge["flags"] and bridge["address"] == mac
    assert bridge["linkinfo"]["info_data"]["stp_state"] == 1
    assert addresses(netns, "pyhvbr0") == ["10.77.0.1/24"]
    assert not on_host("pyhvbr0")  # only inside the namespace
    status = (store_env["runtime"] / "networks" / "lan.xml").read_text()
    dnsmasq_pid = int(re.search(r"dnsmasq='(\d+)'", status).group(1))
    assert _alive(dnsmasq_pid)
    listening = in_ns(netns, ["ss", "-lnup"]).stdout  # ss comes with ip, in iproute2
    assert "%pyhvbr0:67 " in listening and "10.77.0.1:53 " in listening, listening
    table = re.search(r"nftables='([^']+)'", status).group(1)
    ruleset = in_ns(netns, ["nft", "list", "table", "ip", table]).stdout
    assert "masquerade" in ruleset and "10.77.0.0/24" in ruleset
    assert in_ns(netns, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    assert "lan    active" in virsh_in(netns, store_env, ["net-list"]).stdout
    assert "Active:         yes" in virsh_in(netns, store_env, ["net-info", "lan"]).stdout
    again = virsh_in(netns, store_env, ["net-start", "lan"])
    assert again.returncode == 1 and "network is already active" in again.stderr
    refused = virsh_in(netns, store_env, ["net-undefine", "lan"])
    assert refused.returncode == 1 and "still active" in refused.stderr

    done = virsh_in(netns, store_env, ["net-destroy", "lan"])
    assert done.returncode == 0 and done.stdout == "Network lan destroyed\n\n", done.stderr
    assert link(netns, "pyhvbr0") is None
    wait_until(lambda: not _alive(dnsmasq_pid), "dnsmasq ends")
    assert in_ns(netns, ["nft", "list", "table", "ip", table], check=False).returncode != 0
    assert not (store_env["runtime"] / "networks" / "lan.xml").exists()
    assert "lan    inactive" in virsh_in(netns, store_env, ["net-list", "--all"]).stdout


def test_failed_net_start_leaves_nothing_behind(netns, store_env, tmp_path):
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (Debian package 'dnsmasq-base')")
    define_network(netns, store_env, tmp_path)
    before = (store_env["config"] / "networks" / "lan.xml").read_bytes()
    # The bridge name is taken by another interface (a veth: this kernel may lack the dummy driver).
    in_ns(netns, ["ip", "link", "add", "pyhvbr0", "type", "veth", "peer", "name", "pyhvpeer0"])
    done = virsh_in(netns, store_env, ["net-start", "lan"])
    assert done.returncode == 1 and "interface 'pyhvbr0' already exists" in done.stderr, done.stderr
    assert link(netns, "pyhvbr0")["linkinfo"]["info_kind"] == "veth"  # not ours: left alone
    in_ns(netns, ["ip", "link", "del", "pyhvbr0"])
    # dnsmasq cannot bind port 53: the bridge made before it is removed again.
    holder = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c",
                               "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                               "s.bind(('0.0.0.0', 53))\nprint('bound', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        done = virsh_in(netns, store_env, ["net-start", "lan"])
        assert done.returncode == 1 and "dnsmasq failed" in done.stderr, done.stderr
    finally:
        holder.kill()
        holder.wait()
    assert link(netns, "pyhvbr0") is None
    assert not (store_env["runtime"] / "networks" / "lan.xml").exists()
    assert (store_env["config"] / "networks" / "lan.xml").read_bytes() == before
    assert "lan    inactive" in virsh_in(netns, store_env, ["net-list", "--all"]).stdout


def _domain(name: str, kernel: Path, interfaces: str) -> str:
    dom_type = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
    return (f"<domain type='{dom_type}'>\n  <name>{name}</name>\n  <memory unit='MiB'>32</memory>\n"
            f"  <os>\n    <type>hvm</type>\n    <kernel>{kernel}</kernel>\n  </os>\n"
            f"  <devices>\n    <serial type='pty'/>\n{interfaces}  </devices>\n</domain>\n")


def _targets(ns: str, store_env: dict, name: str) -> List[str]:
    live = virsh_in(ns, store_env, ["dumpxml", name]).stdout
    return re.findall(r"<target dev='([^']+)'/>", live)


def test_domain_taps_exist_up_on_their_bridges_and_vanish(netns, store_env, tmp_path, loop_kernel):
    define_network(netns, store_env, tmp_path)
    assert virsh_in(netns, store_env, ["net-start", "lan"]).returncode == 0
    in_ns(netns, ["ip", "link", "add", "pyhvbr1", "type", "bridge"])
    in_ns(netns, ["ip", "link", "set", "pyhvbr1", "up"])
    macs = ["52:54:00:00:aa:01", "52:54:00:00:aa:02", "52:54:00:00:aa:03", "52:54:00:00:aa:04"]
    interfaces = (f"    <interface type='network'><mac address='{macs[0]}'/><source network='lan'/>"
                  "<model type='virtio'/></interface>\n"
                  f"    <interface type='bridge'><mac address='{macs[1]}'/><source bridge='pyhvbr1'/></interface>\n"
                  f"    <interface type='ethernet'><mac address='{macs[2]}'/><target dev='pyhvtap0'/></interface>\n"
                  f"    <interface type='ethernet'><mac address='{macs[3]}'/></interface>\n")
    (tmp_path / "d.xml").write_text(_domain("netvm", loop_kernel, interfaces))
    assert virsh_in(netns, store_env, ["define", str(tmp_path / "d.xml")]).returncode == 0
    done = virsh_in(netns, store_env, ["start", "netvm"])
    assert done.returncode == 0, done.stderr
    taps = _targets(netns, store_env, "netvm")
    assert len(taps) == 4 and taps[2] == "pyhvtap0" and all(t.startswith("vnet") for t in taps[:2] + taps[3:])
    owner = pwd.getpwuid(os.geteuid()).pw_name
    for tap, mac, master in zip(taps, macs, ["pyhvbr0", "pyhvbr1", None, None]):
        details = link(netns, tap)
        assert details is not None, tap
        assert details["linkinfo"]["info_kind"] == "tun" and details["linkinfo"]["info_data"]["type"] == "tap"
        assert details["linkinfo"]["info_data"]["vnet_hdr"] is True  # the guest gets offloads
        assert details["linkinfo"]["info_data"]["user"] in (owner, os.geteuid())
        assert "UP" in details["flags"] and details["address"] == "fe" + mac[2:]
        assert details.get("master") == master, tap
        assert not on_host(tap)
    assert "<target dev=" not in virsh_in(netns, store_env, ["dumpxml", "--inactive", "netvm"]).stdout.replace(
        "<target dev='pyhvtap0'/>", "")

    assert virsh_in(netns, store_env, ["destroy", "netvm"]).returncode == 0
    for tap in taps:
        wait_until(lambda: link(netns, tap) is None, f"{tap} disappears after destroy")

    # A VM process killed outright takes its TAP devices with it too.
    assert virsh_in(netns, store_env, ["start", "netvm"]).returncode == 0
    taps = _targets(netns, store_env, "netvm")
    pid = int((store_env["runtime"] / "netvm.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    for tap in taps:
        wait_until(lambda: link(netns, tap) is None, f"{tap} disappears after SIGKILL")
    assert "shut off" in virsh_in(netns, store_env, ["domstate", "netvm"]).stdout


def test_interface_start_errors(netns, store_env, tmp_path, loop_kernel):
    define_network(netns, store_env, tmp_path)
    cases = {
        "inactive-network": ("<interface type='network'><source network='lan'/></interface>",
                             "network 'lan' is not active (start it with: pyhv virsh net-start lan)"),
        "unknown-network": ("<interface type='network'><source network='nope'/></interface>",
                            "failed to get network 'nope'"),
        "missing-bridge": ("<interface type='bridge'><source bridge='nobr'/></interface>",
                           "bridge 'nobr' does not exist"),
        "not-a-tap": ("<interface type='ethernet'><target dev='lo'/></interface>",
                      "interface 'lo' exists and is not a TAP device"),
    }
    for name, (xml, message) in cases.items():
        (tmp_path / f"{name}.xml").write_text(_domain(name, loop_kernel, f"    {xml}\n"))
        assert virsh_in(netns, store_env, ["define", str(tmp_path / f"{name}.xml")]).returncode == 0
        done = virsh_in(netns, store_env, ["start", name])
        assert done.returncode == 1 and message in done.stderr, (name, done.stderr)
        assert "shut off" in virsh_in(netns, store_env, ["domstate", name]).stdout
    # An inactive network marked autostart is started by the domain that needs it.
    assert virsh_in(netns, store_env, ["net-autostart", "lan"]).returncode == 0
    done = virsh_in(netns, store_env, ["start", "inactive-network"])
    assert done.returncode == 0, done.stderr
    assert "lan    active" in virsh_in(netns, store_env, ["net-list"]).stdout
    tap = _targets(netns, store_env, "inactive-network")[0]
    assert link(netns, tap)["master"] == "pyhvbr0"
    assert virsh_in(netns, store_env, ["destroy", "inactive-network"]).returncode == 0


def test_user_interface_runs_passt(netns, store_env, tmp_path, loop_kernel):
    if shutil.which("passt") is None:
        pytest.skip("passt is not installed (Debian package 'passt')")
    # passt needs an interface with a default route to take its addresses from.
    for command in ("link add up0 type veth peer name up1", "address add 192.0.2.2/24 dev up0", "link set up0 up",
                    "link set up1 up", "route add default via 192.0.2.1"):
        in_ns(netns, ["ip"] + command.split())
    (tmp_path / "u.xml").write_text(_domain("uservm", loop_kernel, "    <interface type='user'/>\n"))
    assert virsh_in(netns, store_env, ["define", str(tmp_path / "u.xml")]).returncode == 0
    done = virsh_in(netns, store_env, ["start", "uservm"])
    assert done.returncode == 0, done.stderr
    socket_path = store_env["runtime"] / "uservm.passt0.socket"
    assert socket_path.exists()
    # Debian's passt may re-execute itself as passt.avx2: found by its socket argument instead.
    passts = [pid for pid in subprocess.run(["ip", "netns", "pids", netns], capture_output=True,
                                            text=True).stdout.split() if str(socket_path) in _command_line(pid)]
    assert len(passts) == 1
    assert virsh_in(netns, store_env, ["destroy", "uservm"]).returncode == 0
    wait_until(lambda: not _alive(int(passts[0])), "passt ends with the domain")
    assert not socket_path.exists()

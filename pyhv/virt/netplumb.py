"""Host network plumbing: TAP devices, Linux bridges and addresses (iproute2), dnsmasq, nftables NAT.

Everything acts on the calling process's network namespace, so a test run under
``ip netns exec`` touches nothing of the host's. Links are changed through the ``ip``
command, as libvirt did for years, rather than through hand-built netlink messages: its
errors are the ones administrators know. A TAP device is created here with ``TUNSETIFF``
and stays as long as its descriptor is open, so a VM process that dies, even by SIGKILL,
takes its TAP devices with it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from typing import Dict, List, Optional

from ..errors import PyhvError
from ..net.backend import NetdevError
from ..net.tap import IFNAMSIZ, kernel_has_vnet_header, open_tap_fd
from .network import NetworkConfig

# _IOW('T', 204/206, int): who may open a persistent TAP device again.
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
SIOCGIFINDEX = 0x8933
IP_FORWARD_SYSCTL = "/proc/sys/net/ipv4/ip_forward"
COMMAND_TIMEOUT_S = 10.0
STOP_WAIT_S = 2.0


class NetPlumbError(PyhvError):
    """A host network device or helper could not be set up; the message names it and why."""


def _require(program: str, package: str, purpose: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise NetPlumbError(f"{purpose} needs '{program}', which is not installed (Debian package '{package}')")
    return path


def run_ip(args: List[str], purpose: str) -> str:
    """``ip ARGS``; NetPlumbError carrying ip's own message when it fails."""
    ip = _require("ip", "iproute2", purpose)
    try:
        done = subprocess.run([ip] + args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NetPlumbError(f"{purpose}: 'ip {' '.join(args)}' did not finish in {COMMAND_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise NetPlumbError(f"{purpose}: 'ip {' '.join(args)}' failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


# --- links ---------------------------------------------------------------------------------
def link_exists(name: str) -> bool:
    """Whether this network namespace has an interface ``name`` (SIOCGIFINDEX: PyPy 3.9's socket
    module has no if_nametoindex)."""
    if not name or len(name.encode()) >= IFNAMSIZ:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, struct.pack("16si20x", name.encode(), 0))
            return True
        except OSError:
            return False


def link_details(name: str) -> Dict[str, object]:
    """``ip -json -details link show``: operstate, flags, master, linkinfo, address, ..."""
    return json.loads(run_ip(["-json", "-details", "link", "show", "dev", name], f"reading link {name}"))[0]


def is_bridge(name: str) -> bool:
    # Asked of ip, not /sys: /sys shows the namespace it was mounted in, which after a bare
    # `nsenter --net` is not this process's.
    linkinfo = link_details(name).get("linkinfo") or {}
    return linkinfo.get("info_kind") == "bridge"  # type: ignore[union-attr]


def delete_link(name: str) -> None:
    if link_exists(name):
        run_ip(["link", "delete", "dev", name], f"removing {name}")


def create_bridge(net: NetworkConfig) -> None:
    """The network's bridge with its MAC, STP setting and address, brought up."""
    purpose = f"network '{net.name}': creating bridge {net.bridge}"
    args = ["link", "add", "name", net.bridge]
    if net.mac:
        args += ["address", net.mac]
    # forward_delay is in hundredths of a second; with STP on the kernel raises it to at least 2 s.
    run_ip(args + ["type", "bridge", "stp_state", "1" if net.stp else "0", "forward_delay", str(net.delay * 100)],
           purpose)
    if net.ip is not None:
        iface = net.ip.interface
        run_ip(["address", "add", str(iface), "broadcast", str(iface.network.broadcast_address),
                "dev", net.bridge], purpose)
    run_ip(["link", "set", "dev", net.bridge, "up"], purpose)


# --- TAP devices ----------------------------------------------------------------------------
class TapDevice:
    """A TAP interface this process created (or attached to) and holds open."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def create_tap(name: str, uid: int, gid: int) -> TapDevice:
    """A TAP device named ``name`` (``%d`` in it lets the kernel pick a number), owned by uid:gid,
    with IFF_VNET_HDR where the kernel has it, as libvirt opens them: the machine that adopts
    the descriptor (``fd=``) then offers its guest checksum and segmentation offloads."""
    try:
        fd, actual = open_tap_fd(name, kernel_has_vnet_header())
    except NetdevError as err:
        raise NetPlumbError(str(err)) from err
    try:
        fcntl.ioctl(fd, TUNSETOWNER, uid)
        fcntl.ioctl(fd, TUNSETGROUP, gid)
    except OSError as err:
        os.close(fd)
        raise NetPlumbError(f"cannot give TAP device '{actual}' to {uid}:{gid}: {err.strerror}") from err
    return TapDevice(fd, actual)


def tap_mac(guest_mac: str) -> str:
    """The host side's MAC: the guest's with 0xfe first, as libvirt does, so that a bridge never
    takes a TAP device's address as its own (it picks the lowest of its ports')."""
    return "fe" + guest_mac[2:]


def plug_tap(tap: TapDevice, guest_mac: str, bridge: Optional[str]) -> None:
    """Give the TAP device its MAC, add it to ``bridge`` (if any) and bring it up."""
    purpose = f"setting up TAP device {tap.name}"
    run_ip(["link", "set", "dev", tap.name, "address", tap_mac(guest_mac)], purpose)
    if bridge is not None:
        if not link_exists(bridge):
            raise NetPlumbError(f"cannot add TAP device {tap.name} to bridge '{bridge}': no such interface")
        if not is_bridge(bridge):
            raise NetPlumbError(f"cannot add TAP device {tap.name} to '{bridge}': it is not a bridge")
        run_ip(["link", "set", "dev", tap.name, "master", bridge], purpose)
    run_ip(["link", "set", "dev", tap.name, "up"], purpose)


# --- dnsmasq --------------------------------------------------------------------------------
def dnsmasq_conf(net: NetworkConfig, pid_file: str, lease_file: str) -> str:
    """dnsmasq's configuration for ``net``: DHCP and DNS on the bridge's address only."""
    assert net.ip is not None
    ip = net.ip
    lines = [
        "# written by pyhv; changes are lost at the next net-start",
        "strict-order", "bind-interfaces",
        f"interface={net.bridge}", "except-interface=lo", f"listen-address={ip.address}",
        f"pid-file={pid_file}", f"dhcp-leasefile={lease_file}",
    ]
    if not net.dns_enabled:
        lines.append("port=0")
    if net.domain_name:
        lines += [f"domain={net.domain_name}", "expand-hosts"]
        if net.domain_local_only:
            lines.append(f"local=/{net.domain_name}/")
    if ip.has_dhcp:
        netmask = ip.netmask
        lease_count = 0
        for start, end in ip.dhcp_ranges:
            lines.append(f"dhcp-range={start},{end},{netmask}")
            lease_count += int(ipaddress.IPv4Address(end)) - int(ipaddress.IPv4Address(start)) + 1
        for host in ip.dhcp_hosts:
            fields = [f for f in (host.mac, host.name, host.ip) if f]
            lines.append("dhcp-host=" + ",".join(fields))
        if not ip.dhcp_ranges and ip.dhcp_hosts:
            lines.append(f"dhcp-range={ip.interface.network.network_address},static,{netmask}")
        lines += ["dhcp-no-override", "dhcp-authoritative",
                  f"dhcp-lease-max={max(lease_count, len(ip.dhcp_hosts))}"]
    return "\n".join(line for line in lines if line) + "\n"


def start_dnsmasq(net: NetworkConfig, conf_path: str, pid_path: str, lease_path: str) -> int:
    """Write the configuration and start dnsmasq (it forks once its sockets are bound); its pid."""
    dnsmasq = _require("dnsmasq", "dnsmasq-base", f"network '{net.name}': DHCP and DNS")
    with open(conf_path, "w") as conf:
        conf.write(dnsmasq_conf(net, pid_path, lease_path))
    open(lease_path, "a").close()
    try:
        done = subprocess.run([dnsmasq, f"--conf-file={conf_path}"], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NetPlumbError(f"network '{net.name}': dnsmasq did not start in {COMMAND_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise NetPlumbError(f"network '{net.name}': dnsmasq failed: {done.stderr.strip() or done.returncode}")
    pid = read_pid(pid_path, "dnsmasq", conf_path)
    if pid is None:
        raise NetPlumbError(f"network '{net.name}': dnsmasq started but wrote no pid file {pid_path}")
    return pid


def read_pid(pid_path: str, program: str, marker: str) -> Optional[int]:
    """The pid in ``pid_path`` if that process is ``program`` started with ``marker`` in its arguments."""
    try:
        with open(pid_path) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    if not argv or os.path.basename(argv[0].decode(errors="replace")) != program:
        return None
    return pid if any(marker.encode() in arg for arg in argv) else None


def stop_process(pid: Optional[int]) -> None:
    """SIGTERM, then SIGKILL if it lingers; a process already gone is fine."""
    if pid is None:
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
                return
            time.sleep(0.02)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# --- forwarding and NAT (nftables) ---------------------------------------------------------------
def nft_table_name(net: NetworkConfig) -> str:
    """One nftables table per network, named from its uuid (network names may hold '+' or ':')."""
    return "pyhv_" + net.uuid.replace("-", "")[:16]


def nft_ruleset(net: NetworkConfig, table: str) -> str:
    """Forwarding rules for ``net``: masquerade (nat) and accept guest traffic on the bridge.

    Only the network's own traffic is touched: the table holds no policy for anything else.
    """
    assert net.ip is not None
    subnet = str(net.ip.interface.network)
    out = f'oifname "{net.forward_dev}" ' if net.forward_dev else ""
    lines = [f"table ip {table} {{", "  chain forward {",
             "    type filter hook forward priority filter; policy accept;"]
    if net.forward == "nat":
        lines += [f'    {out}iifname "{net.bridge}" ip saddr {subnet} accept',
                  f'    oifname "{net.bridge}" ip daddr {subnet} ct state related,established accept']
    else:
        lines += [f'    {out}iifname "{net.bridge}" ip saddr {subnet} accept',
                  f'    oifname "{net.bridge}" ip daddr {subnet} accept']
    lines += [f'    iifname "{net.bridge}" reject', f'    oifname "{net.bridge}" reject', "  }"]
    if net.forward == "nat":
        ports = net.nat_ports
        lines += ["  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;",
                  # Multicast and broadcast stay on the link, unmasqueraded, as libvirt leaves them.
                  f"    ip saddr {subnet} ip daddr 224.0.0.0/24 return",
                  f"    ip saddr {subnet} ip daddr 255.255.255.255 return"]
        if ports is not None:
            for proto in ("tcp", "udp"):
                lines.append(f"    {out}ip saddr {subnet} ip daddr != {subnet} meta l4proto {proto} "
                             f"masquerade to :{ports[0]}-{ports[1]}")
        lines += [f"    {out}ip saddr {subnet} ip daddr != {subnet} masquerade", "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def add_forwarding(net: NetworkConfig) -> Optional[str]:
    """Turn on IPv4 forwarding and load the network's nftables table; the table's name.

    ``open`` forwarding adds no rules (libvirt's meaning: the administrator writes them).
    """
    if net.forward is None:
        return None
    try:
        with open(IP_FORWARD_SYSCTL, "w") as sysctl:
            sysctl.write("1\n")
    except OSError as err:
        raise NetPlumbError(f"network '{net.name}': cannot enable IPv4 forwarding ({IP_FORWARD_SYSCTL}): "
                            f"{err.strerror}") from err
    if net.forward == "open":
        return None
    nft = _require("nft", "nftables", f"network '{net.name}': forward mode='{net.forward}'")
    table = nft_table_name(net)
    done = subprocess.run([nft, "-f", "-"], input=nft_ruleset(net, table), capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)
    if done.returncode != 0:
        raise NetPlumbError(f"network '{net.name}': loading nftables rules failed: {done.stderr.strip()}")
    return table


def remove_forwarding(table: Optional[str]) -> None:
    if not table:
        return
    nft = _require("nft", "nftables", f"removing nftables table {table}")
    subprocess.run([nft, "delete", "table", "ip", table], capture_output=True, timeout=COMMAND_TIMEOUT_S)

"""The TAP back-end in a network namespace made for the test: a frame the guest sends shows
up on the host side of the interface, and the host kernel's answer comes back to the guest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pyhv.errors import ConfigError
from pyhv.net.backend import NetdevError, open_netdev, parse_netdev
from pyhv.net.tap import IFF_VNET_HDR, open_tap_fd, tap_descriptor_flags

# Runs inside the namespace: everything it touches (interface, addresses) lives there.
SCRIPT = textwrap.dedent("""
    import json, queue, socket, struct, subprocess
    from pyhv.net.tap import TapBackend

    tap = TapBackend.open("pyhvtap0")
    subprocess.run(["ip", "link", "set", "pyhvtap0", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "10.77.0.1/24", "dev", "pyhvtap0"], check=True)
    host_side = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    host_side.bind(("pyhvtap0", 0))
    host_side.settimeout(10)
    received = queue.Queue()
    tap.start(received.put)

    guest_mac = bytes.fromhex("525400123456")
    arp = (b"\\xff" * 6 + guest_mac + b"\\x08\\x06"
           + struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + guest_mac + bytes([10, 77, 0, 2])
           + bytes(6) + bytes([10, 77, 0, 1]))
    arp = arp.ljust(60, b"\\0")
    tap.send(arp)
    seen_on_host = False
    for _ in range(20):
        frame, address = host_side.recvfrom(65536)
        if frame == arp and address[2] != socket.PACKET_OUTGOING:
            seen_on_host = True
            break
    reply = None
    for _ in range(20):
        frame = received.get(timeout=10)
        if frame[12:14] == b"\\x08\\x06" and frame[20:22] == b"\\x00\\x02":
            reply = frame
            break
    tap.close()
    print(json.dumps({"name": tap.ifname, "seen_on_host": seen_on_host,
                      "reply": reply.hex() if reply else None}))
""")


def test_frame_through_tap_and_arp_reply_back(namespace):
    result = subprocess.run(["ip", "netns", "exec", namespace.name, sys.executable, "-c", SCRIPT],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["name"] == "pyhvtap0"
    assert outcome["seen_on_host"] is True
    reply = bytes.fromhex(outcome["reply"])
    assert reply[0:6] == bytes.fromhex("525400123456")  # to the guest's MAC
    assert reply[28:32] == bytes([10, 77, 0, 1])  # sender IP: the namespace's address
    assert reply[38:42] == bytes([10, 77, 0, 2])  # target IP: the guest's


def test_tap_options_refused():
    with pytest.raises(NetdevError, match="script=/etc/qemu-ifup: pyhv runs no interface scripts"):
        open_netdev(parse_netdev("tap,id=n0,ifname=t0,script=/etc/qemu-ifup"))
    with pytest.raises(NetdevError, match="vhost is not supported"):
        open_netdev(parse_netdev("tap,id=n0,script=no,downscript=no,vhost=on"))
    with pytest.raises(NetdevError, match="fd=99999 is not an open descriptor"):
        open_netdev(parse_netdev("tap,id=n0,fd=99999"))
    with pytest.raises(NetdevError, match="longer than 15 bytes"):
        open_netdev(parse_netdev("tap,id=n0,ifname=" + "x" * 16))
    with pytest.raises(ConfigError, match="vnet_hdr expects on or off, got 'maybe'"):
        open_netdev(parse_netdev("tap,id=n0,ifname=t0,vnet_hdr=maybe"))
    with pytest.raises(NetdevError, match="vnet_hdr= is invalid with fd="):
        open_netdev(parse_netdev("tap,id=n0,fd=0,vnet_hdr=on"))
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(NetdevError, match=f"fd={read_end} is not an attached TAP descriptor"):
            open_netdev(parse_netdev(f"tap,id=n0,fd={read_end}"))
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("options,vnet_header", [("", True), (",vnet_hdr=on", True), (",vnet_hdr=off", False)])
def test_vnet_hdr_option(namespace, options, vnet_header):
    backend = namespace.run(lambda: open_netdev(parse_netdev(f"tap,id=n0,ifname=pyhvtap0{options}")))
    with backend:
        assert backend.vnet_header is vnet_header
        assert bool(tap_descriptor_flags(backend.fd)[1] & IFF_VNET_HDR) is vnet_header


@pytest.mark.parametrize("vnet_header", [True, False])
def test_adopted_descriptor_is_asked_whether_it_has_the_vnet_header(namespace, vnet_header):
    fd, name = namespace.run(lambda: open_tap_fd("pyhvtap%d", vnet_header))
    with open_netdev(parse_netdev(f"tap,id=n0,fd={fd}")) as backend:
        assert backend.vnet_header is vnet_header
        assert backend.ifname == name

"""Network XML: libvirt's documents accepted, written back valid against network.rng, every bad input named;
domain <interface> checks; the dnsmasq and nftables texts a network turns into."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyhv.virt.domain import DomainXmlError, parse_domain
from pyhv.virt.domain_ifaces import netdev_id
from pyhv.virt.machine_config import to_machine_config
from pyhv.virt.netplumb import dnsmasq_conf, nft_ruleset, nft_table_name, tap_mac
from pyhv.virt.network import NetworkXmlError, free_bridge_name, network_to_xml, parse_network
from pyhv.virt.xmlnode import XmlSyntaxError

SCHEMA = Path("/usr/share/libvirt/schemas/network.rng")

# What libvirt 9.0's network driver writes for its default network (net-dumpxml default).
LIBVIRT_DEFAULT = """<network>
  <name>default</name>
  <uuid>dd8fe884-6c02-601e-7551-cca97df1c5df</uuid>
  <forward mode='nat'>
    <nat>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:0a:cd:21'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
"""

ROUTED = """<network>
  <name>lab</name>
  <uuid>0f4b3c52-7c8e-4c39-9d43-5a1e4b1c2d3e</uuid>
  <forward mode='route' dev='eth1'/>
  <bridge name='labbr' stp='off' delay='3'/>
  <mac address='52:54:00:aa:bb:cc'/>
  <domain name='lab.test' localOnly='yes'/>
  <ip address='10.20.0.1' prefix='16'>
    <dhcp>
      <range start='10.20.1.1' end='10.20.1.99'/>
      <host mac='52:54:00:00:00:07' name='web' ip='10.20.0.7'/>
    </dhcp>
  </ip>
</network>
"""

ISOLATED = """<network>
  <name>iso</name>
  <uuid>3b1a7d9e-1c2f-4e5a-8b6c-7d8e9f0a1b2c</uuid>
  <bridge name='isobr' stp='on' delay='0'/>
  <mac address='52:54:00:01:02:03'/>
  <dns enable='no'/>
  <ip address='172.31.5.1' prefix='24'>
  </ip>
</network>
"""


@pytest.fixture(scope="module")
def relaxng():
    etree = pytest.importorskip("lxml.etree", reason="lxml checks libvirt's RelaxNG schema")
    if not SCHEMA.is_file():
        pytest.skip(f"{SCHEMA} missing: apt-get install libvirt0 (it ships libvirt's schemas)")
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def _valid(relaxng, text: str) -> None:
    from lxml import etree

    assert relaxng.validate(etree.fromstring(text.encode())), str(relaxng.error_log)


@pytest.mark.parametrize("text", [LIBVIRT_DEFAULT, ROUTED, ISOLATED])
def test_round_trip_is_exact_and_schema_valid(text, relaxng):
    _valid(relaxng, text)
    written = network_to_xml(parse_network(text))
    assert written == text.replace("  <ip address='172.31.5.1' prefix='24'>\n  </ip>\n",
                                   "  <ip address='172.31.5.1' prefix='24'/>\n")
    _valid(relaxng, written)
    assert network_to_xml(parse_network(written)) == written


def test_parsed_values():
    net = parse_network(ROUTED)
    assert (net.name, net.bridge, net.stp, net.delay, net.forward, net.forward_dev) == (
        "lab", "labbr", False, 3, "route", "eth1")
    assert (net.ip.address, net.ip.prefix, net.ip.netmask) == ("10.20.0.1", 16, "255.255.0.0")
    assert net.ip.dhcp_ranges == [("10.20.1.1", "10.20.1.99")]
    assert [(h.mac, h.name, h.ip) for h in net.ip.dhcp_hosts] == [("52:54:00:00:00:07", "web", "10.20.0.7")]
    assert net.domain_name == "lab.test" and net.domain_local_only and net.needs_dnsmasq
    assert parse_network(LIBVIRT_DEFAULT).nat_ports == (1024, 65535)
    assert not parse_network(ISOLATED).needs_dnsmasq


def test_minimal_document_gets_uuid_and_defaults(relaxng):
    net = parse_network("<network><name>n</name></network>")
    assert len(net.uuid) == 36 and net.bridge == "" and net.stp and net.forward is None and net.ip is None
    _valid(relaxng, network_to_xml(net))


def test_free_bridge_name_skips_taken():
    taken = {"virbr0", "virbr1", "virbr3"}
    assert free_bridge_name(lambda name: name in taken) == "virbr2"
    assert free_bridge_name(lambda name: False) == "virbr0"


def _doc(inner: str, name: str = "n") -> str:
    return f"<network><name>{name}</name>{inner}</network>"


@pytest.mark.parametrize("text, pattern", [
    ("<net/>", r"line 1: <net>: the root element must be <network>"),
    ("<network/>", r"<name> is missing"),
    (_doc("", name="a/b"), r"'a/b' is not a usable network name"),
    (_doc("<uuid>nope</uuid>"), r"<uuid>: 'nope' is not a UUID"),
    (_doc("<bridge name='a-very-long-bridge-name'/>"), r"longer than 15 bytes"),
    (_doc("<bridge name='br 0'/>"), r"contains '/', ':' or white space"),
    (_doc("<bridge stp='maybe'/>"), r"stp='maybe' is not supported"),
    (_doc("<bridge delay='-1'/>"), r"delay='-1' is not a whole number"),
    (_doc("<mac address='52:54:00:zz:00:01'/>"), r"is not a MAC address"),
    (_doc("<mac address='01:00:5e:00:00:01'/>"), r"multicast"),
    (_doc("<forward mode='bridge'/>"), r"mode='bridge' is not supported .*leave <forward> out"),
    (_doc("<forward mode='nat'/>"), r"mode='nat' needs an IPv4 <ip>"),
    (_doc("<forward mode='route'><nat/></forward><ip address='10.0.0.1' prefix='24'/>"),
     r"<nat> only applies to mode='nat'"),
    (_doc("<forward mode='nat'><nat><port start='9' end='2'/></nat></forward><ip address='10.0.0.1' prefix='24'/>"),
     r"is not a port range"),
    (_doc("<forward dev='x/y'/>"), r"contains '/'"),
    (_doc("<domain name='bad_domain!'/>"), r"is not a DNS domain name"),
    (_doc("<dns enable='maybe'/>"), r"enable='maybe' is not supported"),
    (_doc("<ip address='10.0.0.1'/>"), r"netmask='...' or prefix='...' is missing"),
    (_doc("<ip address='10.0.0.999' prefix='24'/>"), r"address='10.0.0.999' is not an IPv4 address"),
    (_doc("<ip family='ipv6' address='fd00::1' prefix='64'/>"), r"IPv4 only"),
    (_doc("<ip address='10.0.0.1' prefix='24' netmask='255.255.255.0'/>"), r"netmask or prefix, not both"),
    (_doc("<ip address='10.0.0.1' netmask='255.0.255.0'/>"), r"is not a network mask"),
    (_doc("<ip address='10.0.0.1' prefix='33'/>"), r"prefix='33' is not an IPv4 prefix"),
    (_doc("<ip address='10.0.0.0' prefix='24'/>"), r"is the network or broadcast address"),
    (_doc("<ip address='10.0.0.1' prefix='24'/><ip address='10.1.0.1' prefix='24'/>"), r"a second <ip>"),
    (_doc("<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.1.2' end='10.0.1.9'/></dhcp></ip>"),
     r"not entirely within network 10.0.0.0/24"),
    (_doc("<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.9' end='10.0.0.2'/></dhcp></ip>"),
     r"comes after its end"),
    (_doc("<ip address='10.0.0.1' prefix='24'><dhcp><host mac='52:54:00:00:00:01' ip='10.9.0.2'/></dhcp></ip>"),
     r"ip='10.9.0.2' is not within network"),
    (_doc("<ip address='10.0.0.1' prefix='24'><dhcp><host ip='10.0.0.2'/></dhcp></ip>"), r"needs mac=.* or name="),
    (_doc("<ip address='10.0.0.1' prefix='24'><dhcp><host mac='x' ip='10.0.0.2'/></dhcp></ip>"),
     r"mac='x' is not a MAC address"),
    (_doc("<ip address='10.0.0.1' prefix='24'><dhcp><host name='a' ip='10.0.0.2'/><host name='b' ip='10.0.0.2'/>"
          "</dhcp></ip>"), r"given to another DHCP host"),
    (_doc("<portgroup name='x'/>"), r"element <portgroup> in <network> is not supported"),
    (_doc("<bridge name='b' macTableManager='libvirt'/>"), r"attribute macTableManager='libvirt' of <bridge>"),
    ("<network ipv6='yes'><name>n</name></network>", r"attribute ipv6='yes' of <network>"),
])
def test_bad_network_documents(text, pattern):
    with pytest.raises(NetworkXmlError, match=pattern):
        parse_network(text, "net.xml")


def test_errors_name_file_and_line():
    with pytest.raises(NetworkXmlError, match=r"^net\.xml: line 3: element <vlan>"):
        parse_network("<network>\n<name>n</name>\n<vlan/></network>", "net.xml")
    with pytest.raises(XmlSyntaxError, match=r"net\.xml: malformed XML at line 2"):
        parse_network("<network>\n<name>n</name</network>", "net.xml")


# --- domain <interface>s ------------------------------------------------------------------------
def _domain(devices: str, kernel: str = "/k") -> str:
    return (f"<domain type='kvm'><name>d1</name><memory unit='MiB'>64</memory>"
            f"<os><type>hvm</type><kernel>{kernel}</kernel></os><devices>{devices}</devices></domain>")


@pytest.mark.parametrize("devices, pattern", [
    ("<interface type='ethernet'><model type='e1000'/></interface>", r"model type='e1000' is not supported.*virtio"),
    ("<interface type='ethernet'><mac address='01:54:00:00:00:01'/></interface>", r"multicast"),
    ("<interface type='ethernet'><mac address='52:54:00:00:00:01'/></interface>"
     "<interface type='user'><mac address='52:54:00:00:00:01'/></interface>", r"used by another interface"),
    ("<interface type='ethernet'><target dev='tap/0'/></interface>", r"contains '/'"),
    ("<interface type='ethernet'><target dev='averyveryverylongtap'/></interface>", r"longer than 15 bytes"),
    ("<interface type='bridge'><source bridge='br:0'/></interface>", r"contains '/', ':'"),
    ("<interface type='network'><source network='a/b'/></interface>", r"'a/b' is not a usable network name"),
    ("<interface type='bridge'/>", r"<source bridge='...'/> is missing"),
    ("<interface type='direct'/>", r"type='direct' is not supported"),
])
def test_bad_interfaces(devices, pattern):
    with pytest.raises(DomainXmlError, match=pattern):
        parse_domain(_domain(devices))


def test_auto_tap_names_are_not_kept_and_macs_are_generated():
    dom = parse_domain(_domain("<interface type='ethernet'><target dev='vnet4'/></interface>"
                               "<interface type='ethernet'><target dev='tap9'/></interface>"))
    assert [i.target_dev for i in dom.interfaces] == [None, "tap9"]
    assert any("vnet4" in notice and "chosen anew" in notice for notice in dom.ignored)
    macs = [i.mac for i in dom.interfaces]
    assert all(m.startswith("52:54:00:") for m in macs) and macs[0] != macs[1]


def test_interfaces_become_virtio_net_pci_cards(tmp_path):
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    dom = parse_domain(_domain("<interface type='ethernet'><mac address='52:54:00:00:00:0a'/></interface>"
                               "<interface type='bridge'><mac address='52:54:00:00:00:0b'/>"
                               "<source bridge='br0'/></interface>", str(kernel)))
    netdevs = ["tap,id=hostnet0,fd=5", "tap,id=hostnet1,fd=6"]
    cfg = to_machine_config(dom, [], netdevs)
    assert [(d.driver, d.props) for d in cfg.devices] == [
        ("virtio-net-pci", {"netdev": "hostnet0", "mac": "52:54:00:00:00:0a"}),
        ("virtio-net-pci", {"netdev": "hostnet1", "mac": "52:54:00:00:00:0b"})]
    assert cfg.netdevs == netdevs and netdev_id(1) == "hostnet1"


def test_user_interface_without_passt_names_the_package(tmp_path, monkeypatch):
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    monkeypatch.setenv("PATH", str(tmp_path))  # no passt there
    dom = parse_domain(_domain("<interface type='user'/>", str(kernel)))
    with pytest.raises(DomainXmlError, match=r"needs passt .*Debian package 'passt'"):
        to_machine_config(dom, [])


# --- what a network turns into -------------------------------------------------------------------
def test_dnsmasq_configuration():
    net = parse_network(ROUTED)
    conf = dnsmasq_conf(net, "/run/lab.pid", "/run/lab.leases").splitlines()
    for line in ("interface=labbr", "listen-address=10.20.0.1", "bind-interfaces", "except-interface=lo",
                 "dhcp-range=10.20.1.1,10.20.1.99,255.255.0.0", "dhcp-host=52:54:00:00:00:07,web,10.20.0.7",
                 "dhcp-lease-max=99", "domain=lab.test", "local=/lab.test/", "pid-file=/run/lab.pid",
                 "dhcp-leasefile=/run/lab.leases"):
        assert line in conf
    assert "port=0" not in conf
    no_dns = parse_network(ROUTED.replace("<domain", "<dns enable='no'/><domain"))
    assert "port=0" in dnsmasq_conf(no_dns, "/p", "/l").splitlines()


def test_nat_ruleset_masquerades_only_the_network():
    net = parse_network(LIBVIRT_DEFAULT)
    table = nft_table_name(net)
    assert table == "pyhv_dd8fe8846c02601e"
    rules = nft_ruleset(net, table)
    assert rules.startswith(f"table ip {table} {{")
    assert "ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 meta l4proto tcp masquerade to :1024-65535" in rules
    assert "ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 masquerade" in rules
    assert 'oifname "virbr0" ip daddr 192.168.122.0/24 ct state related,established accept' in rules
    routed = nft_ruleset(parse_network(ROUTED), "t")
    assert "masquerade" not in routed and 'oifname "eth1" iifname "labbr" ip saddr 10.20.0.0/16 accept' in routed


def test_tap_mac_is_the_guests_with_fe_first():
    assert tap_mac("52:54:00:12:34:56") == "fe:54:00:12:34:56"

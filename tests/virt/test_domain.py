"""Domain XML: libvirt's own output accepted, normalized write-back valid against domain.rng, bad input named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyhv.virt.domain import DomainXmlError, parse_domain
from pyhv.virt.domain_xml import domain_to_xml
from pyhv.virt.machine_config import to_machine_config
from pyhv.virt.xmlnode import XmlSyntaxError

DATA_DIR = Path(__file__).resolve().parent / "data"
SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")


@pytest.fixture(scope="module")
def relaxng():
    etree = pytest.importorskip("lxml.etree", reason="lxml checks libvirt's RelaxNG schema")
    if not SCHEMA.is_file():
        pytest.skip(f"{SCHEMA} missing: apt-get install libvirt-clients libvirt-daemon-system")
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def _valid(relaxng, text: str) -> None:
    from lxml import etree

    assert relaxng.validate(etree.fromstring(text.encode())), str(relaxng.error_log)


def minimal(kernel: str = "/k", body: str = "", devices: str = "", dom_type: str = "kvm") -> str:
    return (f"<domain type='{dom_type}'><name>d1</name><memory unit='MiB'>64</memory>"
            f"<os><type>hvm</type><kernel>{kernel}</kernel></os>{body}<devices>{devices}</devices></domain>")


@pytest.mark.parametrize("name", ["libvirt_demo.xml", "libvirt_netdemo.xml"])
def test_libvirt_dumpxml_accepted_and_written_back_valid(name, relaxng):
    text = (DATA_DIR / name).read_text()
    _valid(relaxng, text)  # the fixture is what libvirt 9.0 wrote
    dom = parse_domain(text, name)
    assert any("<address>" in n for n in dom.ignored), "ignored elements must be listed"
    out = domain_to_xml(dom)
    _valid(relaxng, out)
    assert domain_to_xml(parse_domain(out)) == out  # normalized form is a fixed point
    live = domain_to_xml(dom, domain_id=7, console_path="/run/x/d.console")
    _valid(relaxng, live)
    assert "id='7'" in live and "path='/run/x/d.console'" in live


def test_libvirt_fields_read():
    dom = parse_domain((DATA_DIR / "libvirt_netdemo.xml").read_text())
    assert dom.type == "qemu" and dom.memory_kib == 131072
    assert [(d.target, d.format, d.readonly) for d in dom.disks] == [("vdb", "qcow2", True)]
    assert [(i.type, i.source, i.target_dev) for i in dom.interfaces] == [
        ("network", "default", None), ("bridge", "br0", None), ("ethernet", None, "tap7")]
    assert dom.interfaces[0].mac == "52:54:00:11:22:33"
    assert dom.serials[0].type == "unix" and dom.serials[0].path == "/tmp/netdemo.sock"


def test_defaults_normalized(relaxng):
    dom = parse_domain(minimal(devices="<interface type='user'><model type='virtio'/></interface>"
                               "<serial type='pty'/><rng model='virtio'><backend model='random'>/dev/urandom"
                               "</backend></rng><memballoon model='none'/>"))
    out = domain_to_xml(dom)
    _valid(relaxng, out)
    assert len(dom.uuid) == 36 and f"<uuid>{dom.uuid}</uuid>" in out
    assert dom.interfaces[0].mac.startswith("52:54:00:")
    assert "<memory unit='KiB'>65536</memory>" in out and "<currentMemory unit='KiB'>65536</currentMemory>" in out
    assert "<on_reboot>restart</on_reboot>" in out and "<target type='isa-serial' port='0'>" in out
    assert parse_domain(out).uuid == dom.uuid


@pytest.mark.parametrize("unit, value, kib", [("KiB", "4096", 4096), ("M", "3", 3072), ("GiB", "1", 1 << 20),
                                              ("MB", "10", 9766), ("b", "4194304", 4096)])
def test_memory_units(unit, value, kib):
    text = minimal().replace("<memory unit='MiB'>64</memory>", f"<memory unit='{unit}'>{value}</memory>")
    assert parse_domain(text).memory_kib == kib


def test_machine_config(tmp_path):
    kernel, disk = tmp_path / "k", tmp_path / "a,b.img"
    kernel.write_bytes(b"k")
    disk.write_bytes(b"\0" * 512)
    dom = parse_domain(minimal(str(kernel), "<cpu mode='host-passthrough'/><on_reboot>destroy</on_reboot>",
                               f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                               f"<source file='{disk}'/><target dev='vda' bus='virtio'/><readonly/></disk>"
                               "<serial type='pty'/><rng model='virtio'><backend model='random'>/dev/urandom"
                               "</backend></rng>"))
    cfg = to_machine_config(dom, ["/run/c.sock"])
    assert cfg.accel == ("kvm",) and cfg.cpu == "host" and cfg.no_reboot and cfg.ram_size == 64 << 20
    assert cfg.serial == ["unix:/run/c.sock,server,nowait"]
    assert cfg.drives == [f"file={str(disk).replace(',', ',,')},if=virtio,format=raw,readonly=on,snapshot=off,id=vda"]
    assert [d.driver for d in cfg.devices] == ["virtio-rng-device"]
    assert to_machine_config(parse_domain(minimal(str(kernel), dom_type="qemu")), []).accel == ("tcg",)


def test_machine_config_refuses_missing_kernel(tmp_path):
    with pytest.raises(DomainXmlError, match=r"kernel file '.*/nope' does not exist"):
        to_machine_config(parse_domain(minimal(str(tmp_path / "nope"))), [])


def test_malformed_xml_names_line_and_column():
    with pytest.raises(XmlSyntaxError, match=r"x\.xml: malformed XML at line 3, column 2") as info:
        parse_domain("<domain type='kvm'>\n<name>a</name>\n<</domain>", "x.xml")
    assert (info.value.line, info.value.column) == (3, 2)


@pytest.mark.parametrize("body, devices, pattern", [
    ("<blkiotune/>", "", r"line 1: element <blkiotune> in <domain> is not supported"),
    ("", "<graphics type='vnc'/>", r"element <graphics> in <devices> is not supported"),
    ("", "<disk type='file' device='disk' snapshot='no'><source file='/x'/><target dev='vda'/></disk>",
     r"attribute snapshot='no' of <disk> is not supported"),
    ("", "<disk type='block'><source dev='/dev/sda'/><target dev='vda'/></disk>", r"type='block' is not supported"),
    ("", "<disk type='file'><source file='/x'/><target dev='hda' bus='ide'/></disk>", r"bus='ide' is not supported"),
    ("<vcpu>2</vcpu>", "", r"<vcpu>: 2 vCPUs: pyhv runs 1 vCPU"),
    ("<on_crash>preserve</on_crash>", "", r"'preserve' is not supported"),
    ("<uuid>not-a-uuid</uuid>", "", r"<uuid>: 'not-a-uuid' is not a UUID"),
    ("", "<interface type='network'/>", r"<source network='...'/> is missing"),
    ("", "<interface type='user'><mac address='zz'/></interface>", r"'zz' is not a MAC address"),
    ("", "<serial type='file'/>", r"type='file' is not supported"),
    ("", "<rng model='virtio'><backend model='egd'/></rng>", r"model='egd' is not supported"),
])
def test_unsupported_input_is_an_error(body, devices, pattern):
    with pytest.raises(DomainXmlError, match=pattern):
        parse_domain(minimal(body=body, devices=devices))


@pytest.mark.parametrize("text, pattern", [
    ("<vm/>", r"root element must be <domain>"),
    ("<domain><name>a</name></domain>", r"type attribute is missing"),
    ("<domain type='xen'><name>a</name></domain>", r"type='xen' is not supported"),
    ("<domain type='kvm'><memory>65536</memory></domain>", r"<name> is missing"),
    ("<domain type='kvm'><name>a/b</name><memory>65536</memory></domain>", r"'a/b' is not a usable domain name"),
    ("<domain type='kvm'><name>a</name><os><type>hvm</type></os></domain>", r"<memory> is missing"),
    ("<domain type='kvm'><name>a</name><memory unit='parsec'>1</memory></domain>", r"unknown unit 'parsec'"),
    ("<domain type='kvm'><name>a</name><memory>1</memory></domain>", r"less than the 2048 KiB"),
    ("<domain type='kvm'><name>a</name><memory>65536</memory><os><type>hvm</type></os></domain>",
     r"<kernel> is missing"),
    ("<domain type='kvm'><name>a</name><name>b</name></domain>", r"line 1: <name>: appears more than once"),
])
def test_bad_documents(text, pattern):
    with pytest.raises(DomainXmlError, match=pattern):
        parse_domain(text)


def test_error_names_the_line():
    text = minimal(devices="\n\n<video/>").replace("<devices>", "\n<devices>")
    with pytest.raises(DomainXmlError, match=r"line 4: element <video>"):
        parse_domain(text)


def test_ignore_unsupported_lists_what_it_skipped():
    dom = parse_domain(minimal(body="<blkiotune/>", devices="<graphics type='vnc'/>"), ignore_unsupported=True)
    assert any("<blkiotune>" in n and "ignored" in n for n in dom.ignored)
    assert any("<graphics>" in n for n in dom.ignored)
    assert "graphics" not in domain_to_xml(dom)


def test_a_transient_disk_is_a_snapshot_drive_and_written_back_valid(tmp_path, relaxng):
    kernel, disk = tmp_path / "k", tmp_path / "d.qcow2"
    kernel.write_bytes(b"k")
    disk.write_bytes(b"\0" * 512)
    devices = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>"
               "<target dev='vdb' bus='virtio'/><transient/></disk>")
    dom = parse_domain(minimal(str(kernel), devices=devices))
    assert [(d.target, d.transient) for d in dom.disks] == [("vdb", True)]
    out = domain_to_xml(dom)
    _valid(relaxng, out)
    assert "<transient/>" in out and parse_domain(out).disks[0].transient
    assert to_machine_config(dom, []).drives == [f"file={disk},if=virtio,format=qcow2,readonly=off,snapshot=on,id=vdb"]


def test_a_transient_disk_shared_between_domains_is_refused():
    devices = ("<disk type='file' device='disk'><source file='/d.img'/><target dev='vda' bus='virtio'/>"
               "<transient shareBacking='yes'/></disk>")
    with pytest.raises(DomainXmlError, match="shareBacking"):
        parse_domain(minimal(devices=devices))

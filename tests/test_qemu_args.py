"""`pyhv run` parses QEMU's syntax; anything it does not support is a clear error."""

import re
from pathlib import Path

import pytest

from pyhv.config import MiB, parse_memory_size
from pyhv.errors import ConfigError
from pyhv.qemu_args import parse_run_args


def test_full_line():
    cfg = parse_run_args([
        "-m", "256M", "-smp", "1", "-kernel", "k", "-initrd", "i", "-append", "console=ttyS0 quiet",
        "-accel", "kvm:tcg", "-cpu", "qemu64", "-nographic", "-no-reboot", "-name", "vm1",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "--serial", "file:/tmp/x",
    ])
    assert cfg.ram_size == 256 * MiB
    assert cfg.kernel == Path("k") and cfg.initrd == "i" and cfg.append == "console=ttyS0 quiet"
    assert cfg.accel == ("kvm", "tcg") and cfg.cpu == "qemu64" and cfg.no_reboot and cfg.name == "vm1"
    assert cfg.devices[0].driver == "isa-debug-exit"
    assert cfg.devices[0].props == {"iobase": "0xf4", "iosize": "4"}
    assert cfg.serial == ["file:/tmp/x"]


def test_defaults():
    cfg = parse_run_args(["-kernel", "k"])
    assert cfg.ram_size == 128 * MiB and cfg.serial == ["stdio"] and cfg.accel == ("kvm", "tcg")
    assert not cfg.no_reboot and cfg.decompress is None


@pytest.mark.parametrize("text,size", [("64", 64 * MiB), ("1G", 1 << 30), ("512M", 512 * MiB),
                                       ("size=32M", 32 * MiB), ("2048k", 2 * MiB), ("1.5G", 3 << 29)])
def test_memory_sizes(text, size):
    assert parse_memory_size(text) == size


@pytest.mark.parametrize("argv,message", [
    (["-kernel", "k", "-hda", "disk.img"], "unsupported option '-hda'"),
    (["-kernel", "k", "-m"], "option '-m' needs a value"),
    (["-kernel", "k", "-m", "lots"], "-m lots: not a memory size"),
    (["-kernel", "k", "-m", "1T"], "more than this host"),
    (["-kernel", "k", "-m", "1M"], "at least 2 MiB"),
    (["-kernel", "k", "-accel", "hvf"], "unknown accelerator 'hvf'"),
    (["-kernel", "k", "-smp", "4"], "only 1 vCPU"),
    (["-kernel", "k", "-device", "isa-debug-exit,iobase"], "needs a value"),
    (["-kernel", "k", "-display", "gtk"], "no graphical display"),
    (["-kernel", "k", "-machine", "virt"], "unknown machine type 'virt'"),
    (["-kernel", "k", "stray"], "unexpected argument 'stray'"),
    (["-nographic"], "no guest given"),
    (["-kernel", "k", "-no-reboot=1"], "takes no value"),
])
def test_bad_input(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_run_args(argv)


def test_machine_accel_property():
    assert parse_run_args(["-M", "pc,accel=tcg", "-kernel", "k"]).accel == ("tcg",)
    assert parse_run_args(["-enable-kvm", "-kernel", "k"]).accel == ("kvm",)


@pytest.mark.parametrize("text,chardev_id,spec", [
    ("stdio,id=c0", "c0", "stdio"),
    ("stdio,id=c0,signal=off", "c0", "stdio,signal=off"),
    ("null,id=n", "n", "null"),
    ("file,id=log,path=/tmp/out.txt", "log", "file:/tmp/out.txt"),
    ("socket,id=con,path=/run/x.sock,server=on,wait=off", "con", "unix:/run/x.sock,server,nowait"),
    ("socket,id=con,path=/run/x.sock", "con", "unix:/run/x.sock"),
])
def test_chardev_option(text, chardev_id, spec):
    cfg = parse_run_args(["-kernel", "k", "-chardev", text])
    assert cfg.chardevs == {chardev_id: spec}


@pytest.mark.parametrize("text,message", [
    ("stdio", "missing id="),
    ("socket,id=s,host=127.0.0.1,port=4444", "unix sockets only"),
    ("pty,id=p", "unsupported back-end 'pty'"),
    ("file,id=f", "file needs path="),
    ("null,id=n,mux=on", "unsupported property 'mux'"),
])
def test_bad_chardev(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_run_args(["-kernel", "k", "-chardev", text])


def test_duplicate_chardev_id():
    with pytest.raises(ConfigError, match="already used"):
        parse_run_args(["-kernel", "k", "-chardev", "null,id=a", "-chardev", "null,id=a"])


def test_drive_options_keep_their_order():
    cfg = parse_run_args(["-kernel", "k", "-drive", "file=a.img,if=virtio,format=raw",
                          "-blockdev", "driver=file,node-name=f,filename=b.img", "-drive", "file=c.qcow2,if=none,id=d"])
    assert cfg.drives == ["file=a.img,if=virtio,format=raw", "file=c.qcow2,if=none,id=d"]
    assert cfg.blockdevs == ["driver=file,node-name=f,filename=b.img"]


@pytest.mark.parametrize("text,shift,sleep", [
    ("0", 0, True), ("shift=3", 3, True), ("shift=auto", 0, True), ("auto,sleep=off", 0, False),
    ("shift=2,sleep=on", 2, True), ("off", None, True),
])
def test_icount(text, shift, sleep):
    cfg = parse_run_args(["-kernel", "k", "-icount", text])
    assert (cfg.icount_shift, cfg.icount_sleep) == (shift, sleep)


@pytest.mark.parametrize("text,message", [("shift=11", "shift must be 0..10"), ("shift=x", "not a number"),
                                          ("align=on", "unsupported 'align=on'")])
def test_bad_icount(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_run_args(["-kernel", "k", "-icount", text])


def test_seed_makes_the_boot_rng_seed_reproducible():
    from pyhv.boot.zeropage import RNG_SEED_BYTES, boot_rng_seed

    assert parse_run_args(["-kernel", "k"]).seed is None
    cfg = parse_run_args(["-kernel", "k", "-seed", "42"])
    assert cfg.seed == 42
    assert boot_rng_seed(42) == boot_rng_seed(42) != boot_rng_seed(43)
    assert len(boot_rng_seed(42)) == len(boot_rng_seed()) == RNG_SEED_BYTES
    assert boot_rng_seed() != boot_rng_seed()  # without -seed, fresh host randomness each boot


@pytest.mark.parametrize("text,message", [("x", "not a number"), ("-1", "from 0 to 2"),
                                          (str(1 << 64), "from 0 to 2")])
def test_bad_seed(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_run_args(["-kernel", "k", "-seed", text])


def test_nic_is_a_netdev_and_its_card():
    cfg = parse_run_args(["-kernel", "k", "-nic", "tap,ifname=tap7,script=no,mac=52:54:00:00:00:07",
                          "-nic", "stream,addr.type=unix,addr.path=/run/passt.sock,model=virtio", "-nic", "none"])
    assert cfg.netdevs == ["tap,id=__pyhv.nic0,ifname=tap7,script=no",
                           "stream,id=__pyhv.nic1,addr.type=unix,addr.path=/run/passt.sock"]
    assert [(d.driver, d.props) for d in cfg.devices] == [
        ("virtio-net-pci", {"netdev": "__pyhv.nic0", "mac": "52:54:00:00:00:07"}),
        ("virtio-net-pci", {"netdev": "__pyhv.nic1"})]


@pytest.mark.parametrize("text,message", [
    ("user", "slirp"),
    ("user,hostfwd=tcp::2222-:22", "slirp"),
    ("tap,model=e1000", "model=e1000 is not a card pyhv has"),
    ("tap,id=n0", "takes no id="),
])
def test_bad_nic(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_run_args(["-kernel", "k", "-nic", text])


def test_qmp_sockets_in_qemus_spellings():
    config = parse_run_args(["-kernel", "k", "-qmp", "unix:/run/a.sock,server=on,wait=off",
                             "--qmp", "unix:/run/b.sock,server,nowait", "-qmp", "unix:/run/c.sock,server"])
    assert [(spec.path, spec.wait) for spec in config.qmp] == [
        ("/run/a.sock", False), ("/run/b.sock", False), ("/run/c.sock", True)]  # QEMU's server waits
    assert parse_run_args(["-kernel", "k"]).qmp == []


@pytest.mark.parametrize("value, message", [
    ("tcp:localhost:4444,server=on", "-qmp tcp:localhost:4444,server=on: pyhv serves QMP on unix sockets only"),
    ("stdio", "pyhv serves QMP on unix sockets only"),
    ("unix:/run/q.sock", "add server=on"),
    ("unix:,server=on", "-qmp unix:,server=on: unix: needs a path"),
    ("unix:/run/q.sock,server=on,wait=maybe", "option wait expects on or off, got 'maybe'"),
    ("unix:/run/q.sock,server=on,telnet=on", "-qmp unix:/run/q.sock,server=on,telnet=on: unknown option 'telnet=on'"),
])
def test_bad_qmp_options(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_run_args(["-kernel", "k", "-qmp", value])


def test_one_socket_cannot_serve_two_monitors():
    with pytest.raises(ConfigError, match="already a QMP socket"):
        parse_run_args(["-kernel", "k", "-qmp", "unix:/run/q,server,nowait", "-qmp", "unix:/run/q,server"])


def test_monitor_none_is_accepted_and_a_human_monitor_refused():
    assert parse_run_args(["-kernel", "k", "-monitor", "none"]).qmp == []
    with pytest.raises(ConfigError, match="-monitor stdio: pyhv has no human monitor .*use -qmp"):
        parse_run_args(["-kernel", "k", "-monitor", "stdio"])


def test_mon_control_on_a_socket_chardev_is_qmp_as_libvirt_spells_it():
    config = parse_run_args(["-kernel", "k", "-chardev", "socket,id=charmonitor,path=/run/m.sock,server=on,wait=off",
                             "-mon", "chardev=charmonitor,id=monitor,mode=control"])
    assert [(spec.path, spec.wait) for spec in config.qmp] == [("/run/m.sock", False)]
    assert "charmonitor" not in config.chardevs  # the monitor's, not a console's


@pytest.mark.parametrize("options, message", [
    (["-mon", "chardev=nope,mode=control"], "no -chardev with id 'nope' before it"),
    (["-chardev", "socket,id=m,path=/run/m.sock,server=on,wait=off", "-mon", "chardev=m"],
     "pyhv has no human monitor (mode=readline)"),
    (["-chardev", "file,id=m,path=/tmp/log", "-mon", "chardev=m,mode=control"], "unix sockets only"),
    (["-chardev", "socket,id=m,path=/run/m.sock,server=on", "-mon", "chardev=m,mode=control,bogus=1"],
     "unsupported property 'bogus'"),
])
def test_bad_mon_options(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_run_args(["-kernel", "k"] + options)

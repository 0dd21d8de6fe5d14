"""The default Linux guest (Debian 6.1 cloud kernel, busybox initramfs) on the software CPU,
checked from inside: its virtio drivers, an ext4 disk and a raw one, the hardware RNG and a TAP
network.

``test_one_boot_checks_kernel_timer_virtio_disks_and_rng`` is the CI boot (issue #5): one boot
of minutes on PyPy runs every check in one guest command, separated by step markers so that
a failure names the step that broke. ``test_guest_pings_the_host_over_tap`` (slow, root) puts
a TAP interface in a network namespace of its own and lets the guest ping it (issue #6).

The guest command is wrapped in ``eval "..."``: the kernel hands every word after `` -- `` to
init as an argument and panics ("Too many boot init vars") past 32 of them, but it keeps a
double-quoted string as one word. /init reads the command from /proc/cmdline, so the shell
still sees the whole text, quotes included.
"""

from __future__ import annotations

import os
import platform
import re
import json
import secrets
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest

from pyhv.cpu_model import BRAND_STRING

needs_pypy = pytest.mark.skipif(
    platform.python_implementation() != "PyPy" and os.environ.get("PYHV_TEST_LINUX_CPYTHON") != "1",
    reason="Linux boot on the software CPU runs on PyPy (CPython is too slow for CI)")

BOOT_TIMEOUT_S = 1500
STEP_MARKER = "@@pyhv-step"
DISK_SIZE = 16 << 20
CHECK_FILE = "/pyhv-check.txt"
GUEST_MOUNT = "/mnt/disk"
HWRNG_BYTES = 64
INIT_ARG_LIMIT = 32  # the kernel's CONFIG_INIT_ENV_ARG_LIMIT

# The ping test's private network: the TAP end in the namespace and the guest's eth0.
HOST_ADDRESS = "10.0.2.1"
GUEST_ADDRESS = "10.0.2.15"
GUEST_MAC = "52:54:00:12:34:99"
TAP_NAME = "pyhvtap0"
PING_COUNT = 3

# The offload test's TCP transfers, one each way, and what it expects the guest to accept.
UPLOAD_PORT = 5001
DOWNLOAD_PORT = 5002
TRANSFER_CHUNKS = 24  # of 64 KiB: 1.5 MiB each way
ETHERNET_MAX_FRAME = 1514  # what an MTU of 1500 allows without segmentation offload
OFFLOAD_BITS = {"CSUM": 0, "GUEST_CSUM": 1, "GUEST_TSO4": 7, "GUEST_TSO6": 8, "GUEST_ECN": 9,
                "HOST_TSO4": 11, "HOST_TSO6": 12, "HOST_ECN": 13}
MRG_RXBUF_BIT = 15


class Console(NamedTuple):
    """One finished boot: serial console (stdout), pyhv's stderr and the exit status."""

    stdout: str
    stderr: str
    status: int

    def describe(self) -> str:
        return f"exit status {self.status}\n--- console ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


@pytest.fixture(scope="module")
def guest():
    from pyhv.guestimage import build_default_guest

    return build_default_guest()


def guest_command(steps: List[str]) -> str:
    """One shell command for /init running ``steps`` in order: ``eval "..."``, which the kernel
    counts as two init arguments whatever the length (see the module docstring)."""
    script = "; ".join([f"m() {{ echo {STEP_MARKER} $1; }}"] + steps)
    if '"' in script or "\\" in script:
        raise ValueError(f"guest script must not contain double quotes or backslashes: {script!r}")
    # Inside the double quotes the outer sh would expand $ at once; eval must see it.
    return 'eval "' + script.replace("$", "\\$") + '"'


def step(name: str, *commands: str) -> str:
    return "; ".join((f"m {name}",) + commands)


def drain_console_and_power_off() -> str:
    # poweroff -f does not wait for the UART: re-applying the console's settings (TCSADRAIN) does.
    return "stty -F /dev/console $(stty -F /dev/console -g); poweroff -f"


def boot(guest, command: str, devices: List[str], prefix: Optional[List[str]] = None,
         at_step: Optional[Tuple[str, Callable[[], None]]] = None) -> Console:
    """Boot the default guest on -accel tcg running ``command``; no isa-debug-exit device, so
    the guest leaves through ACPI power-off. ``at_step`` is (step name, action): the action
    runs on the host once the guest has printed that step's marker, while the guest goes on."""
    argv = (prefix or []) + [
        sys.executable, "-m", "pyhv", "run", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
        "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), *devices,
        "-append", f"{guest.cmdline} -- {command}"]
    started = time.monotonic()
    deadline = started + BOOT_TIMEOUT_S
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    console: List[bytes] = []
    errors: List[bytes] = []
    reached = threading.Event()
    marker = f"{STEP_MARKER} {at_step[0]}".encode() if at_step else None

    def read_console() -> None:
        for line in process.stdout:
            console.append(line)
            if marker is not None and line.rstrip() == marker:
                reached.set()
        reached.set()  # the guest ended without reaching the step: stop waiting

    readers = [threading.Thread(target=read_console, daemon=True),
               threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        if at_step is not None and reached.wait(max(0.0, deadline - time.monotonic())) and process.poll() is None:
            at_step[1]()
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        for reader in readers:
            reader.join()
        partial = Console(_text(b"".join(console)), _text(b"".join(errors)), -1)
        pytest.fail(f"guest still running after {BOOT_TIMEOUT_S} s, killed\n{partial.describe()}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for reader in readers:
        reader.join()
    print(f"boot took {time.monotonic() - started:.0f} s, exit status {process.returncode}")
    return Console(_text(b"".join(console)), _text(b"".join(errors)), process.returncode)


def _text(data: Optional[bytes]) -> str:
    if isinstance(data, str):
        return data
    return (data or b"").decode("utf-8", errors="replace")


def split_steps(console: str) -> Dict[str, str]:
    """The console output after each step marker, by step name."""
    sections: Dict[str, str] = {}
    pattern = re.compile(rf"^{re.escape(STEP_MARKER)} (\S+)\r?$", re.MULTILINE)
    marks = list(pattern.finditer(console))
    for here, following in zip(marks, marks[1:] + [None]):
        end = following.start() if following is not None else len(console)
        sections[here.group(1)] = console[here.end():end]
    return sections


def section(sections: Dict[str, str], name: str, run: Console) -> str:
    if name not in sections:
        pytest.fail(f"the guest never reached step '{name}'\n{run.describe()}")
    return sections[name]


def timer_count(interrupts: str) -> Optional[int]:
    """The local APIC timer count ("LOC:"), else the IO-APIC timer line's ("0:")."""
    for pattern in (r"^\s*LOC:\s+(\d+)", r"^\s*0:\s+(\d+)"):
        found = re.search(pattern, interrupts, re.MULTILINE)
        if found is not None:
            return int(found.group(1))
    return None


def make_ext4_image(path: Path) -> None:
    if shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None:
        pytest.skip("needs mkfs.ext4 and debugfs (Debian package e2fsprogs)")
    with open(path, "wb") as image:
        image.truncate(DISK_SIZE)
    # Inode tables and journal zeroed here, so the guest's ext4lazyinit thread has nothing to do.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(path)],
                   check=True, capture_output=True)


def read_back(image: Path, path: str) -> str:
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True)
    assert done.returncode == 0, f"debugfs cat {path} on {image} failed: {done.stderr}"
    return done.stdout


def test_guest_command_survives_the_kernels_init_argument_limit():
    command = guest_command([step("a", "echo $HOME done")] * 40)
    assert len(command.split()) > INIT_ARG_LIMIT
    # The kernel splits at whitespace outside double quotes: eval and one quoted word.
    assert len(re.findall(r'"[^"]*"|\S+', command)) == 2
    assert "\\$HOME" in command
    with pytest.raises(ValueError, match="double quotes"):
        guest_command(['echo "quoted"'])


def test_guest_command_runs_its_steps_under_sh_as_init_runs_it():
    command = guest_command([step("first", "x=late", "echo value: $x"), step("second", "echo ${x##l}")])
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env={"x": "early"})
    steps = split_steps(done.stdout)
    assert steps == {"first": "\nvalue: late\n", "second": "\nate\n"}, done.stdout + done.stderr


@needs_pypy
def test_one_boot_checks_kernel_timer_virtio_disks_and_rng(guest, tmp_path):
    image = tmp_path / "disk.ext4"
    make_ext4_image(image)
    raw_image = tmp_path / "raw.img"
    with open(raw_image, "wb") as stream:
        stream.truncate(DISK_SIZE)
    content = "pyhv-" + secrets.token_hex(16)
    raw_content = "pyhv-raw-" + secrets.token_hex(16)
    command = guest_command([
        step("uname", "uname -r"),
        step("cpuinfo", "cat /proc/cpuinfo"),
        step("crng", "dmesg | grep 'crng init done'"),
        step("interrupts-before", "cat /proc/interrupts", "sleep 1"),
        step("interrupts-after", "cat /proc/interrupts"),
        step("drivers",
             "for d in /sys/bus/virtio/drivers/*; do echo driver ${d##*/}: $(ls $d | grep virtio); done", "lsmod"),
        # Which vdX is which depends on probe order: tell the disks apart by their transport.
        step("disks", "for b in /sys/block/vd*; do p=$(readlink -f $b); echo disk ${b##*/} at $p",
             "case $p in *LNRO0005*) mmio=${b##*/};; */pci0000:00/*) pci=${b##*/};; esac; done"),
        step("ext4", f"mkdir -p {GUEST_MOUNT}",
             f"mount -t ext4 /dev/$mmio {GUEST_MOUNT} && echo {content} > {GUEST_MOUNT}{CHECK_FILE}"
             f" && cat {GUEST_MOUNT}{CHECK_FILE} && sync && umount {GUEST_MOUNT} && echo ext4: unmounted"),
        step("raw", f"echo {raw_content} | dd of=/dev/$pci conv=fsync 2>/dev/null && echo raw: written"),
        step("hwrng", "echo rng_current: $(cat /sys/class/misc/hw_random/rng_current)",
             f"head -c {HWRNG_BYTES} /dev/hwrng | od -An -v -tx1"),
        step("end", drain_console_and_power_off()),
    ])
    # The ext4 disk on the virtio-mmio transport (ACPI LNRO0005), the raw disk and the RNG on virtio-pci.
    run = boot(guest, command, ["-drive", f"file={image},if=virtio,format=raw",
                                "-drive", f"file={raw_image},if=none,id=raw0,format=raw",
                                "-device", "virtio-blk-pci,drive=raw0", "-device", "virtio-rng-pci"])
    steps = split_steps(run.stdout)

    assert guest.kernel_version in section(steps, "uname", run), f"step uname\n{run.describe()}"

    model = re.search(r"^model name\s*:\s*(.*?)\s*$", section(steps, "cpuinfo", run), re.MULTILINE)
    assert model is not None and model.group(1) == BRAND_STRING, f"step cpuinfo\n{run.describe()}"

    # pyhv's RNG seed (setup_data) initialises the kernel's crng while it parses boot_params,
    # long before the virtio-rng driver could.
    crng = re.search(r"^\[\s*(\d+\.\d+)\] random: crng init done", section(steps, "crng", run), re.MULTILINE)
    assert crng is not None and float(crng.group(1)) < 0.01, f"step crng\n{run.describe()}"

    before = timer_count(section(steps, "interrupts-before", run))
    after = timer_count(section(steps, "interrupts-after", run))
    assert before is not None and after is not None and after > before, \
        f"step interrupts: timer count {before} -> {after} across sleep 1\n{run.describe()}"

    drivers = section(steps, "drivers", run)
    for driver in ("virtio_blk", "virtio_rng"):
        assert re.search(rf"^driver {driver}: virtio\d+", drivers, re.MULTILINE), \
            f"step drivers: no device bound to {driver}\n{run.describe()}"
    disks = section(steps, "disks", run)
    for transport, path in (("virtio-mmio (ACPI)", r"/sys/devices/platform/LNRO0005:\d+/virtio\d+/block/vd\w+"),
                            ("virtio-pci", r"/sys/devices/pci0000:00/[^/]+/virtio\d+/block/vd\w+")):
        assert re.search(rf"^disk vd\w+ at {path}\s*$", disks, re.MULTILINE), \
            f"step disks: no disk on {transport}\n{run.describe()}"

    ext4 = section(steps, "ext4", run)
    assert content in ext4 and "ext4: unmounted" in ext4, f"step ext4\n{run.describe()}"
    assert "raw: written" in section(steps, "raw", run), f"step raw\n{run.describe()}"

    rng = section(steps, "hwrng", run)
    assert re.search(r"^rng_current: virtio_rng\.\d+", rng, re.MULTILINE), f"step hwrng\n{run.describe()}"
    dump_lines = re.findall(r"^((?: [0-9a-f]{2})+)\s*$", rng, re.MULTILINE)  # od -An -v -tx1
    random_bytes = " ".join(dump_lines).split()
    assert len(random_bytes) == HWRNG_BYTES and set(random_bytes) != {"00"}, \
        f"step hwrng: expected {HWRNG_BYTES} random bytes, got {random_bytes}\n{run.describe()}"

    section(steps, "end", run)
    assert run.status == 0 and "reboot: Power down" in run.stdout, f"step end (poweroff)\n{run.describe()}"
    assert read_back(image, CHECK_FILE) == content + "\n", \
        f"the host read back another {CHECK_FILE} than the guest wrote\n{run.describe()}"
    with open(raw_image, "rb") as stream:
        written = stream.read(len(raw_content) + 1)
    assert written == (raw_content + "\n").encode(), \
        f"the raw disk starts with {written!r}, not what the guest wrote\n{run.describe()}"


PACKED_BIT = 34  # VIRTIO_F_RING_PACKED: a character of /sys/bus/virtio/devices/*/features


@pytest.mark.slow
@needs_pypy
def test_linux_drives_packed_virtqueues_on_blk_and_rng(guest, tmp_path):
    """``packed=on`` on a virtio-blk-pci disk and virtio-rng-pci: Linux's virtio_ring takes
    packed rings (bit 34 in the features it accepted), reads what the host put on the disk,
    writes what the host then finds there, and reads random bytes."""
    image = tmp_path / "packed.img"
    host_content = "pyhv-host-" + secrets.token_hex(16)
    guest_content = "pyhv-packed-" + secrets.token_hex(16)
    with open(image, "wb") as stream:
        stream.truncate(DISK_SIZE)
        stream.write(host_content.encode() + b"\n")
    command = guest_command([
        step("features", "for d in /sys/bus/virtio/devices/*; do "
             "echo virtio device $(cat $d/device) features $(cat $d/features); done"),
        step("read", f"head -c {len(host_content)} /dev/vda; echo"),
        step("write", f"echo {guest_content} | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null",
             "echo 3 > /proc/sys/vm/drop_caches",
             f"dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c {len(guest_content)}; echo"),
        step("hwrng", f"head -c {HWRNG_BYTES} /dev/hwrng | od -An -v -tx1"),
        step("end", drain_console_and_power_off()),
    ])
    run = boot(guest, command, ["-drive", f"file={image},if=none,id=d0,format=raw",
                                "-device", "virtio-blk-pci,drive=d0,packed=on",
                                "-device", "virtio-rng-pci,packed=on"])
    steps = split_steps(run.stdout)
    print(section(steps, "features", run))
    features = dict(re.findall(r"^virtio device (0x[0-9a-f]+) features ([01]+)\s*$",
                               section(steps, "features", run), re.MULTILINE))
    for device_id, name in (("0x0002", "virtio-blk"), ("0x0004", "virtio-rng")):
        assert device_id in features and features[device_id][PACKED_BIT] == "1", \
            f"step features: {name} without VIRTIO_F_RING_PACKED\n{run.describe()}"
    assert host_content in section(steps, "read", run), f"step read\n{run.describe()}"
    assert guest_content in section(steps, "write", run), f"step write\n{run.describe()}"
    random_bytes = " ".join(re.findall(r"^((?: [0-9a-f]{2})+)\s*$", section(steps, "hwrng", run),
                                       re.MULTILINE)).split()
    assert len(random_bytes) == HWRNG_BYTES and set(random_bytes) != {"00"}, f"step hwrng\n{run.describe()}"
    section(steps, "end", run)
    assert run.status == 0 and "reboot: Power down" in run.stdout, f"step end (poweroff)\n{run.describe()}"
    with open(image, "rb") as stream:
        stream.seek(8 * 512)
        written = stream.read(len(guest_content) + 1)
    assert written == (guest_content + "\n").encode(), \
        f"sector 8 holds {written!r}, not what the guest wrote\n{run.describe()}"


def _ip(*args: str, netns: Optional[str] = None) -> subprocess.CompletedProcess:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(prefix + ["ip", *args], capture_output=True, text=True)


@pytest.fixture
def tap_in_netns():
    """A network namespace holding TAP interface TAP_NAME at HOST_ADDRESS/24, up; deleted after."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace and a TAP interface")
    if shutil.which("ip") is None:
        pytest.skip("needs the ip command (Debian package iproute2)")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun")
    netns = f"pyhv-test-{os.getpid()}"
    created = _ip("netns", "add", netns)
    if created.returncode != 0:
        pytest.skip(f"ip netns add failed: {created.stderr.strip()}")
    try:
        for args in (("link", "set", "lo", "up"),
                     # No packet info; pyhv attaches with IFF_VNET_HDR (-netdev tap's default).
                     ("tuntap", "add", "dev", TAP_NAME, "mode", "tap"),
                     ("addr", "add", f"{HOST_ADDRESS}/24", "dev", TAP_NAME),
                     ("link", "set", TAP_NAME, "up")):
            done = _ip(*args, netns=netns)
            assert done.returncode == 0, f"ip {' '.join(args)} in {netns}: {done.stderr}"
        yield netns
    finally:
        _ip("netns", "del", netns)  # takes the TAP interface with it


def host_ping_command() -> List[str]:
    if shutil.which("ping"):
        return ["ping"]
    if shutil.which("busybox"):
        return ["busybox", "ping"]
    pytest.skip("needs ping on the host (Debian package iputils-ping or busybox-static)")


@pytest.mark.slow
@needs_pypy
def test_guest_and_host_ping_each_other_over_tap(guest, tap_in_netns):
    host_ping = host_ping_command()
    # The guest's count of echo requests received, found by its column name in /proc/net/snmp.
    echo_requests = ("awk '/^Icmp:/ {n++; for (i = 2; i <= NF; i++) {if (n == 1) k[i] = $i; "
                     "else if (k[i] ~ /^InEchos$/) print $i}}' /proc/net/snmp")
    command = guest_command([
        step("link", "ip link set eth0 up", f"ip addr add {GUEST_ADDRESS}/24 dev eth0",
             "echo mac: $(cat /sys/class/net/eth0/address)",
             "echo eth0 driver: $(basename $(readlink -f /sys/class/net/eth0/device/driver))"),
        step("ping", f"ping -c {PING_COUNT} -W 10 {HOST_ADDRESS}", "echo ping status: $?"),
        # The host pings now; the guest waits (bounded) until it has answered them all.
        step("wait-for-host", f"e() {{ {echo_requests}; }}", "n=0",
             f"while [ $(e) -lt {PING_COUNT} ] && [ $n -lt 600 ]; do sleep 1; n=$((n+1)); done",
             "echo echo requests answered: $(e)"),
        step("end", drain_console_and_power_off()),
    ])
    host_pinged: List[subprocess.CompletedProcess] = []

    def ping_the_guest() -> None:
        host_pinged.append(subprocess.run(
            ["ip", "netns", "exec", tap_in_netns, *host_ping, "-c", str(PING_COUNT), "-W", "10", GUEST_ADDRESS],
            capture_output=True, text=True, timeout=300))

    run = boot(guest, command,
               ["-netdev", f"tap,id=n0,ifname={TAP_NAME},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}"],
               prefix=["ip", "netns", "exec", tap_in_netns], at_step=("wait-for-host", ping_the_guest))
    steps = split_steps(run.stdout)
    link = section(steps, "link", run)
    assert f"mac: {GUEST_MAC}" in link and "eth0 driver: virtio_net" in link, f"step link\n{run.describe()}"
    ping = section(steps, "ping", run)
    assert f"{PING_COUNT} packets transmitted, {PING_COUNT} packets received" in ping \
        and "ping status: 0" in ping, f"step ping (guest to host)\n{run.describe()}"
    waited = section(steps, "wait-for-host", run)
    assert host_pinged and host_pinged[0].returncode == 0, \
        f"host to guest ping: {host_pinged[0].stdout + host_pinged[0].stderr if host_pinged else 'not run'}" \
        f"\n{run.describe()}"
    answered = re.search(r"^echo requests answered: (\d+)", waited, re.MULTILINE)
    assert answered is not None and int(answered.group(1)) >= PING_COUNT, f"step wait-for-host\n{run.describe()}"
    section(steps, "end", run)
    assert run.status == 0 and "reboot: Power down" in run.stdout, f"step end (poweroff)\n{run.describe()}"


# Runs in the namespace beside the guest: captures the frames crossing the TAP, takes the
# guest's upload, then sends it a download (retrying until the guest listens) and prints
# what it saw as one JSON line.
TRANSFER_PEER = textwrap.dedent("""
    import hashlib, json, os, socket, sys, threading, time
    tap, host, guest, up_port, down_port, chunks = sys.argv[1:7]
    largest = {"from_guest": 0, "to_guest": 0}
    capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    capture.bind((tap, 0))

    def count_frames():
        while True:
            frame, address = capture.recvfrom(1 << 17)
            way = "to_guest" if address[2] == socket.PACKET_OUTGOING else "from_guest"
            largest[way] = max(largest[way], len(frame))

    threading.Thread(target=count_frames, daemon=True).start()
    listener = socket.socket()
    listener.bind((host, int(up_port)))
    listener.listen(1)
    listener.settimeout(1200)
    print("ready", flush=True)
    upload, _ = listener.accept()
    # The guest's nc writes 1 KiB at a time, slower than the host acknowledges: left unread for
    # a while, the stream piles up in the guest's socket buffer and then leaves it in segments
    # of many MSS, as a fast sender's would.
    time.sleep(5)
    received, size = hashlib.md5(), 0
    while True:
        data = upload.recv(1 << 16)
        if not data:
            break
        received.update(data)
        size += len(data)
    upload.close()
    payload = os.urandom(int(chunks) << 16)
    deadline = time.monotonic() + 600
    while True:
        try:
            download = socket.create_connection((guest, int(down_port)), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    download.settimeout(600)
    download.sendall(payload)
    download.shutdown(socket.SHUT_WR)
    while download.recv(1 << 16):
        pass
    download.close()
    time.sleep(0.5)  # the capture thread catches up with the last frames
    print(json.dumps({"upload_md5": received.hexdigest(), "upload_bytes": size,
                      "download_md5": hashlib.md5(payload).hexdigest(), "download_bytes": len(payload),
                      "largest": largest}), flush=True)
""")


@pytest.mark.slow
@needs_pypy
def test_guest_negotiates_offloads_and_sends_and_receives_tcp_segments_over_tap(guest, tap_in_netns):
    command = guest_command([
        step("link", "ip link set eth0 up", f"ip addr add {GUEST_ADDRESS}/24 dev eth0"),
        step("features", "echo features: $(cat /sys/class/net/eth0/device/features)"),
        step("upload", "mkdir -p /tmp", f"dd if=/dev/urandom of=/tmp/up bs=65536 count={TRANSFER_CHUNKS} 2>/dev/null",
             "echo up md5: $(md5sum /tmp/up)",
             f"timeout 600 nc {HOST_ADDRESS} {UPLOAD_PORT} < /tmp/up", "echo upload status: $?"),
        step("download", f"timeout 900 nc -w 600 -l -p {DOWNLOAD_PORT} < /dev/null > /tmp/down",
             "echo download status: $?", "echo down md5: $(md5sum /tmp/down)", "echo down bytes: $(wc -c < /tmp/down)"),
        step("end", drain_console_and_power_off()),
    ])
    peer = subprocess.Popen(
        ["ip", "netns", "exec", tap_in_netns, sys.executable, "-c", TRANSFER_PEER, TAP_NAME, HOST_ADDRESS,
         GUEST_ADDRESS, str(UPLOAD_PORT), str(DOWNLOAD_PORT), str(TRANSFER_CHUNKS)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline().strip() == "ready", peer.stderr.read()
        run = boot(guest, command,
                   ["-netdev", f"tap,id=n0,ifname={TAP_NAME},script=no,downscript=no",
                    "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}"],
                   prefix=["ip", "netns", "exec", tap_in_netns])
        try:
            peer_out, peer_err = peer.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer_out, peer_err = peer.communicate()
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    steps = split_steps(run.stdout)
    section(steps, "link", run)

    features = re.search(r"^features: ([01]+)\s*$", section(steps, "features", run), re.MULTILINE)
    assert features is not None, f"step features\n{run.describe()}"
    negotiated = features.group(1)
    print(f"guest features: {negotiated}")
    missing = [name for name, bit in OFFLOAD_BITS.items() if negotiated[bit] != "1"]
    assert not missing and negotiated[MRG_RXBUF_BIT] == "1", \
        f"step features: {negotiated} lacks {missing} (or MRG_RXBUF)\n{run.describe()}"

    assert peer.returncode == 0, f"host side of the transfers: {peer_err}\n{run.describe()}"
    seen = json.loads(peer_out.strip().splitlines()[-1])
    print(f"host side saw: {seen}")
    upload = section(steps, "upload", run)
    sent = re.search(r"^up md5: ([0-9a-f]{32})", upload, re.MULTILINE)
    assert sent is not None and "upload status: 0" in upload, f"step upload\n{run.describe()}"
    assert (seen["upload_md5"], seen["upload_bytes"]) == (sent.group(1), TRANSFER_CHUNKS << 16), \
        f"the host received other bytes than the guest sent: {seen}\n{run.describe()}"
    download = section(steps, "download", run)
    got = re.search(r"^down md5: ([0-9a-f]{32})", download, re.MULTILINE)
    assert got is not None and "download status: 0" in download, f"step download\n{run.describe()}"
    assert got.group(1) == seen["download_md5"], \
        f"the guest received other bytes than the host sent: {seen}\n{run.describe()}"

    # Frames longer than the MTU allows exist only as TCP segments the other side splits.
    assert seen["largest"]["from_guest"] > ETHERNET_MAX_FRAME, f"no TSO from the guest: {seen}"
    assert seen["largest"]["to_guest"] > ETHERNET_MAX_FRAME, f"no TSO to the guest: {seen}"
    section(steps, "end", run)
    assert run.status == 0 and "reboot: Power down" in run.stdout, f"step end (poweroff)\n{run.describe()}"

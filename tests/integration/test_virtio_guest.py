"""The virtio_blk test guest drives pyhv's virtio-blk over virtio-mmio like a real driver.

The guest (tests/guests/virtio_blk.S) negotiates the device, then reads, writes, flushes,
asks for the serial and reads past the end, printing the status, used length and CRC-32
of every request. The disk images get content from a seed here, so every expected line is
computed from the bytes on the host, and after the run the image on the host must hold
exactly what the guest wrote: for raw images compared byte for byte, for qcow2 through
qemu-img check/compare and qemu-io. QEMU's microvm runs the same guest as the peer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

import pytest



def _integration_helpers():
    """tests/integration/conftest.py as a module of its own: the run_pyhv/run_qemu fixtures
    take no extra options and these runs need -drive and -device, so they build on the
    conftest's helpers. By path, since `import conftest` gets whichever conftest pytest
    loaded last when several test directories are collected together."""
    path = Path(__file__).resolve().parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("pyhv_integration_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _integration_helpers()
GuestRun = _helpers.GuestRun
kvm_usable = _helpers.kvm_usable
pyhv_argv = _helpers.pyhv_argv
qemu_argv = _helpers.qemu_argv
qemu_usable = _helpers.qemu_usable
run_vm = _helpers.run_vm

EXIT_OK_STATUS = 33  # isa-debug-exit: (0x10 << 1) | 1
EXIT_FAIL_STATUS = 35  # (0x11 << 1) | 1
KVM_TIMEOUT_S = 60
TCG_TIMEOUT_S = 600
QEMU_TIMEOUT_S = 60
TOOL_TIMEOUT_S = 60

SECTOR = 512
DISK_SECTORS = 128
BULK_SECTORS = 8
ID_BYTES = 20
READ_SECTOR = 37
WRITE_SECTOR = 5
SERIAL = "pyhv-virtio-0042"
WRITE_PATTERN_TAG = 0x5A000000
S_OK, S_IOERR = 0, 1

# pyhv: the first virtio-mmio device sits at 0xD0000000 on GSI 16, with 256-entry queues.
PYHV_IRQ_PIN = 16
PYHV_QUEUE_MAX = 256
# QEMU's microvm with one IOAPIC and ACPI puts its eight transports at 0xFEB00000 + 0x200 * i
# on GSIs 16 + i and fills the last one first; its virtio-mmio reports 1024 as QueueNumMax.
QEMU_MICROVM = "microvm,ioapic2=off"
QEMU_VIRTIO_BASE = 0xFEB00E00
QEMU_IRQ_PIN = 23
QEMU_QUEUE_MAX = 1024

ACCELERATORS = [
    pytest.param("kvm", marks=pytest.mark.kvm, id="kvm"),
    pytest.param("tcg", id="tcg"),
]


class Scenario(NamedTuple):
    """What the guest is asked to do and what the disk looks like to it."""

    disk: bytes  # guest-visible content before the run
    read_sector: int
    write_sector: int
    read_only: bool
    serial: str
    irq_pin: Optional[int]  # None: polling only
    queue_max: int = PYHV_QUEUE_MAX

    def append(self, base: Optional[int] = None) -> str:
        words = [f"read={self.read_sector}", f"write={self.write_sector}"]
        if base is not None:
            words.append(f"base={base}")
        if self.irq_pin is not None:
            words.append(f"irq={self.irq_pin}")
        return " ".join(words)


def seeded_bytes(seed: int, length: int) -> bytes:
    return random.Random(seed).getrandbits(8 * length).to_bytes(length, "little")


def write_pattern(sector: int) -> bytes:
    """What the guest writes: dword j of the sector is tag | sector << 8 | j."""
    return struct.pack(f"<{SECTOR // 4}I", *(WRITE_PATTERN_TAG | sector << 8 | j for j in range(SECTOR // 4)))


def disk_after(scenario: Scenario) -> bytes:
    if scenario.read_only:
        return scenario.disk
    offset = scenario.write_sector * SECTOR
    return scenario.disk[:offset] + write_pattern(scenario.write_sector) + scenario.disk[offset + SECTOR:]


def _sector(disk: bytes, sector: int) -> bytes:
    return disk[sector * SECTOR:(sector + 1) * SECTOR]


def _read_line(disk: bytes, sector: int) -> str:
    crc = zlib.crc32(_sector(disk, sector))
    return f"read sector {sector}: status {S_OK} used {SECTOR + 1} crc32 {crc:#x}"


def expected_lines(scenario: Scenario) -> List[str]:
    """The guest's serial output, line by line, derived from the disk bytes."""
    before, after = scenario.disk, disk_after(scenario)
    capacity = len(before) // SECTOR
    yes_no = {True: "yes", False: "no"}
    if scenario.read_only:
        write = f"write sector {scenario.write_sector}: status {S_IOERR}"
    else:
        write = f"write sector {scenario.write_sector}: status {S_OK} used 1"
    lines = [
        "virtio-mmio: version 2, device id 2",
        "status after reset: 0x0",
        f"device features: version_1 yes, ro {yes_no[scenario.read_only]}, flush yes",
        "status after FEATURES_OK: 0xb",
        f"queue 0: max {scenario.queue_max}, size 16, ready 1",
        "status after DRIVER_OK: 0xf",
        f"capacity: {capacity} sectors",
        _read_line(before, 0),
        _read_line(before, scenario.read_sector),
        write,
        _read_line(after, scenario.write_sector),
        f"flush: status {S_OK} used 1",
        f'get id: status {S_OK} used {ID_BYTES + 1} serial "{scenario.serial}"',
        f"read sector {capacity}: status {S_IOERR}",
        f"read {capacity} sectors, {BULK_SECTORS} per request: status {S_OK} crc32 {zlib.crc32(after):#x}",
        "interrupt status after polling: 0x0",
    ]
    if scenario.irq_pin is not None:
        lines += [
            f"ioapic: pin {scenario.irq_pin} -> vector 0x40, level-triggered, active high",
            _read_line(after, scenario.read_sector),
            "used-buffer interrupts: 1, interrupt status seen 0x1, after ack 0x0",
        ]
    lines.append("virtio-blk: done")
    return lines


def assert_guest_output(run: GuestRun, scenario: Scenario) -> None:
    expected = "".join(line + "\n" for line in expected_lines(scenario))
    assert (run.stdout, run.status) == (expected, EXIT_OK_STATUS), run.describe()
    assert "Traceback" not in run.stderr, run.describe()


def blk_device_options(path: Path, fmt: str, serial: str) -> List[str]:
    """A -drive with no device of its own and the virtio-blk-device naming it (and the serial)."""
    return ["-drive", f"file={path},if=none,id=disk0,format={fmt}",
            "-device", f"virtio-blk-device,drive=disk0,serial={serial}"]


def run_pyhv_with(kernel: Path, accel: str, scenario: Scenario, options: Sequence[str]) -> GuestRun:
    if accel == "kvm" and not kvm_usable():
        pytest.skip("needs /dev/kvm (absent or not readable and writable)")
    timeout_s = KVM_TIMEOUT_S if accel == "kvm" else TCG_TIMEOUT_S
    return run_vm(pyhv_argv(kernel, accel, scenario.append(), sys.executable) + list(options), timeout_s)


def run_qemu_microvm(kernel: Path, scenario: Scenario, options: Sequence[str]) -> GuestRun:
    if not qemu_usable():
        pytest.skip("needs qemu-system-x86_64 as the peer (not on PATH)")
    if not kvm_usable():
        pytest.skip("needs /dev/kvm (absent or not readable and writable)")
    argv = qemu_argv(kernel, "kvm", scenario.append(QEMU_VIRTIO_BASE), QEMU_MICROVM)
    # QEMU's virtio-mmio is legacy (version 1) unless told otherwise; the guest drives version 2.
    argv += ["-global", "virtio-mmio.force-legacy=false"] + list(options)
    return run_vm(argv, QEMU_TIMEOUT_S)


def tool(*argv: str) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"needs {argv[0]} (Debian qemu-utils)")
    return subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)


def qemu_io_ok(image: Path, *commands: str) -> str:
    argv = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        argv += ["-c", command]
    done = tool(*argv, str(image))
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "fail" not in output.lower() and "error" not in output.lower(), output
    return output


# --- raw images ------------------------------------------------------------------------------

def raw_scenario(tmp_path: Path, seed: int, irq_pin: Optional[int]) -> Tuple[Scenario, Path]:
    disk = seeded_bytes(seed, DISK_SECTORS * SECTOR)
    image = tmp_path / "disk.raw"
    image.write_bytes(disk)
    return Scenario(disk, READ_SECTOR, WRITE_SECTOR, False, SERIAL, irq_pin), image


@pytest.mark.parametrize("accel", ACCELERATORS)
@pytest.mark.parametrize("irq_pin", [None, PYHV_IRQ_PIN], ids=["polled", "interrupt"])
def test_raw_disk(accel, irq_pin, tmp_path, guest_kernel):
    scenario, image = raw_scenario(tmp_path, seed=20261125, irq_pin=irq_pin)
    run = run_pyhv_with(guest_kernel("virtio_blk"), accel, scenario, blk_device_options(image, "raw", SERIAL))
    assert_guest_output(run, scenario)
    after = image.read_bytes()
    assert _sector(after, WRITE_SECTOR) == write_pattern(WRITE_SECTOR)
    assert after == disk_after(scenario)


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_read_only_drive_refuses_the_write(accel, tmp_path, guest_kernel):
    """-drive if=virtio,readonly=on: the device offers VIRTIO_BLK_F_RO, the write gets IOERR."""
    disk = seeded_bytes(7, DISK_SECTORS * SECTOR)
    image = tmp_path / "disk.raw"
    image.write_bytes(disk)
    image.chmod(0o444)
    digest = hashlib.sha256(disk).hexdigest()
    scenario = Scenario(disk, READ_SECTOR, WRITE_SECTOR, True, "", None)
    options = ["-drive", f"file={image},if=virtio,format=raw,readonly=on"]
    run = run_pyhv_with(guest_kernel("virtio_blk"), accel, scenario, options)
    assert_guest_output(run, scenario)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest


# --- qcow2 images ------------------------------------------------------------------------------

QCOW2_CLUSTER = 4096
QCOW2_WRITE_SECTOR = 50  # in a cluster nothing has allocated: the guest's write allocates it
# (offset, length, what qemu-io writes): "seed:N" seeded bytes, "pattern:B" byte B, "zero".
QCOW2_LAYOUT = [
    (0, 16384, "seed:1"),
    (16384, 4096, "pattern:0xa5"),
    # 20480-32767: never written, reads as zeros from unallocated clusters
    (32768, 4096, "zero"),
    (36864, 28672, "seed:2"),
]
QCOW2_UNTOUCHED_HOLE = (20480, QCOW2_WRITE_SECTOR * SECTOR - 20480)


def build_qcow2(tmp_path: Path) -> Tuple[Path, bytes]:
    """A qcow2 image made by `pyhv img create`, filled by qemu-io; returns it and its content."""
    image = tmp_path / "disk.qcow2"
    size = DISK_SECTORS * SECTOR
    created = subprocess.run(
        [sys.executable, "-m", "pyhv", "img", "create", "-f", "qcow2", "-o", f"cluster_size={QCOW2_CLUSTER}",
         str(image), str(size)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    assert created.returncode == 0, created.stdout + created.stderr
    content = bytearray(size)
    commands = []
    for offset, length, what in QCOW2_LAYOUT:
        kind, _, arg = what.partition(":")
        if kind == "seed":
            data = seeded_bytes(int(arg), length)
            source = tmp_path / f"source-{offset}.bin"
            source.write_bytes(data)
            commands.append(f"write -s {source} {offset} {length}")
        elif kind == "pattern":
            data = bytes([int(arg, 16)]) * length
            commands.append(f"write -P {arg} {offset} {length}")
        else:
            data = bytes(length)
            commands.append(f"write -z {offset} {length}")
        content[offset:offset + length] = data
    qemu_io_ok(image, *commands)
    return image, bytes(content)


def check_qcow2_after(image: Path, expected: bytes, tmp_path: Path) -> None:
    check = tool("qemu-img", "check", str(image))
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout + check.stderr
    reference = tmp_path / "expected.raw"
    reference.write_bytes(expected)
    compare = tool("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(image), str(reference))
    assert compare.returncode == 0, compare.stdout + compare.stderr
    hole_offset, hole_length = QCOW2_UNTOUCHED_HOLE
    qemu_io_ok(image, "read -P 0xa5 16384 4096", f"read -P 0 {hole_offset} {hole_length}",
               "read -P 0 32768 4096")


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_qcow2_disk(accel, tmp_path, guest_kernel):
    image, content = build_qcow2(tmp_path)
    scenario = Scenario(content, READ_SECTOR, QCOW2_WRITE_SECTOR, False, SERIAL, None)
    run = run_pyhv_with(guest_kernel("virtio_blk"), accel, scenario, blk_device_options(image, "qcow2", SERIAL))
    assert_guest_output(run, scenario)
    check_qcow2_after(image, disk_after(scenario), tmp_path)


# --- the peer ----------------------------------------------------------------------------------

@pytest.mark.qemu
@pytest.mark.kvm
@pytest.mark.parametrize("variant", ["raw", "read-only", "qcow2"])
def test_same_guest_under_qemu_microvm(variant, tmp_path, guest_kernel):
    """The expectations themselves, checked against QEMU's virtio-blk-device (microvm, KVM).

    Only where the two machines differ by design does the expectation change: the window
    address and IOAPIC pin (pyhv's layout is its own) and QueueNumMax.
    """
    if variant == "qcow2":
        image, content = build_qcow2(tmp_path)
        scenario = Scenario(content, READ_SECTOR, QCOW2_WRITE_SECTOR, False, SERIAL, QEMU_IRQ_PIN, QEMU_QUEUE_MAX)
        options = blk_device_options(image, "qcow2", SERIAL)
    else:
        read_only = variant == "read-only"
        scenario, image = raw_scenario(tmp_path, seed=99, irq_pin=QEMU_IRQ_PIN)
        scenario = scenario._replace(read_only=read_only, queue_max=QEMU_QUEUE_MAX)
        options = ["-drive", f"file={image},if=none,id=disk0,format=raw,readonly={'on' if read_only else 'off'}",
                   "-device", f"virtio-blk-device,drive=disk0,serial={SERIAL}"]
    run = run_qemu_microvm(guest_kernel("virtio_blk"), scenario, options)
    assert_guest_output(run, scenario)
    if variant == "qcow2":
        check_qcow2_after(image, disk_after(scenario), tmp_path)
    else:
        assert image.read_bytes() == disk_after(scenario)


SNAPSHOT_OPTIONS = [
    pytest.param(["-snapshot"], id="dash-snapshot"),
    pytest.param(None, id="drive-snapshot-on"),
]


@pytest.mark.parametrize("vmm", [pytest.param("kvm", marks=pytest.mark.kvm), "tcg", "qemu"])
@pytest.mark.parametrize("how", SNAPSHOT_OPTIONS)
def test_snapshot_gives_the_guest_its_writes_and_leaves_the_image_as_it_was(vmm, how, tmp_path, guest_kernel,
                                                                            monkeypatch):
    """-snapshot (or snapshot=on): the guest writes and reads back as on a writable disk, and
    the image is as it was afterwards; the temporary overlay is gone, under QEMU too."""
    scenario, image = raw_scenario(tmp_path, seed=4242, irq_pin=None)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # where both VMMs put the overlay
    snapshot = "" if how is not None else ",snapshot=on"
    options = (how or []) + ["-drive", f"file={image},if=none,id=disk0,format=raw{snapshot}",
                             "-device", f"virtio-blk-device,drive=disk0,serial={SERIAL}"]
    if vmm == "qemu":
        scenario = scenario._replace(queue_max=QEMU_QUEUE_MAX)
        run = run_qemu_microvm(guest_kernel("virtio_blk"), scenario, options)
    else:
        run = run_pyhv_with(guest_kernel("virtio_blk"), vmm, scenario, options)
    assert_guest_output(run, scenario)
    assert image.read_bytes() == scenario.disk
    assert list(scratch.iterdir()) == []


# --- what the guest and pyhv say when the set-up is wrong ----------------------------------------

@pytest.mark.parametrize("accel", ACCELERATORS)
def test_guest_reports_a_missing_device(accel, guest_kernel):
    """No -drive: the window reads as all ones (nothing answers there), which the probe names."""
    scenario = Scenario(b"", READ_SECTOR, WRITE_SECTOR, False, "", None)
    run = run_pyhv_with(guest_kernel("virtio_blk"), accel, scenario, [])
    assert (run.stdout, run.status) == ("no virtio-mmio device at 0xd0000000: magic 0xffffffff\n", EXIT_FAIL_STATUS), \
        run.describe()


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_guest_refuses_a_device_that_is_not_a_disk(accel, guest_kernel):
    scenario = Scenario(b"", READ_SECTOR, WRITE_SECTOR, False, "", None)
    run = run_pyhv_with(guest_kernel("virtio_blk"), accel, scenario, ["-device", "virtio-rng-device"])
    expected = "virtio-mmio: version 2, device id 4\nnot a block device\n"
    assert (run.stdout, run.status) == (expected, EXIT_FAIL_STATUS), run.describe()


def test_serial_belongs_on_the_device_not_the_drive(tmp_path, guest_kernel):
    """QEMU dropped -drive serial=; pyhv refuses it too, naming the option, before any guest runs."""
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(DISK_SECTORS * SECTOR))
    scenario = Scenario(b"", READ_SECTOR, WRITE_SECTOR, False, "", None)
    options = ["-drive", f"file={image},if=virtio,format=raw,serial={SERIAL}"]
    run = run_pyhv_with(guest_kernel("virtio_blk"), "tcg", scenario, options)
    assert run.status not in (0, EXIT_OK_STATUS, EXIT_FAIL_STATUS) and run.stdout == "", run.describe()
    assert "unsupported option 'serial'" in run.stderr and "Traceback" not in run.stderr, run.describe()

"""The virtio_blk test guest with the machine built in this process, so the test can look
inside afterwards: the disk's queue was served by the I/O thread, and under KVM every
QueueNotify went through KVM_IOEVENTFD (none reached the MMIO register as an exit).

The guest's expected output and the disk's expected content come from
test_virtio_guest.py (the same scenario, raw disk, with the used-buffer interrupt).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pyhv.machine import Machine
from pyhv.qemu_args import parse_run_args


def _load(name: str):
    path = Path(__file__).resolve().parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pyhv_integration_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


guest_test = _load("test_virtio_guest")
helpers = _load("conftest")

ACCELERATORS = [
    pytest.param("kvm", marks=pytest.mark.kvm, id="kvm"),
    pytest.param("tcg", id="tcg"),
]


def run_in_process(tmp_path: Path, kernel: Path, accel: str, scenario, image: Path):
    serial = tmp_path / "serial.txt"
    argv = ["-accel", accel, "-m", helpers.GUEST_RAM_MIB, "-nographic", "-no-reboot",
            "-serial", f"file:{serial}", "-device", helpers.DEBUG_EXIT_DEVICE, "-kernel", str(kernel),
            "-append", scenario.append()]
    argv += guest_test.blk_device_options(image, "raw", scenario.serial)
    machine = Machine(parse_run_args(argv), notice=lambda message: None)
    try:
        stop = machine.run()
        transport = machine.virtio.slots[0].transport
        counts = {
            "notify_writes": transport.notify_writes,
            "kicks": machine.iothread.kicks,
            "batches": machine.iothread.batches,
            "failures": machine.iothread.failures,
            "doorbells": getattr(machine.accel, "doorbells", 0),
        }
    finally:
        machine.close()
    return stop, serial.read_text(), counts


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_queue_served_by_the_iothread(accel, tmp_path, guest_kernel):
    if accel == "kvm" and not helpers.kvm_usable():
        pytest.skip("needs /dev/kvm (absent or not readable and writable)")
    scenario, image = guest_test.raw_scenario(tmp_path, seed=6, irq_pin=guest_test.PYHV_IRQ_PIN)
    stop, output, counts = run_in_process(tmp_path, guest_kernel("virtio_blk"), accel, scenario, image)
    assert output == "".join(line + "\n" for line in guest_test.expected_lines(scenario)), counts
    assert stop.status == guest_test.EXIT_OK_STATUS
    assert image.read_bytes() == guest_test.disk_after(scenario)
    # Requests the guest makes: reads, write, flush, get-id, past-the-end, the bulk read, the
    # interrupt-driven read; each one kick (kicks that pile up are served in one batch).
    assert counts["kicks"] >= 8 and 1 <= counts["batches"] <= counts["kicks"], counts
    assert counts["failures"] == 0, counts
    if accel == "kvm":
        assert counts["doorbells"] == 1, counts
        assert counts["notify_writes"] == 0, counts  # every notify stayed inside KVM
    else:
        assert counts["doorbells"] == 0 and counts["notify_writes"] == counts["kicks"], counts

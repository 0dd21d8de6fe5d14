"""A domain's <transient/> disk: the guest's writes go to an overlay that outlives a reboot of the
domain and is deleted when the domain shuts off; the image is never written (libvirt's meaning)."""

from __future__ import annotations

import threading
import time

from pyhv.virt.domain import parse_domain
from pyhv.virt.runner import DomainRunner
from pyhv.virt.store import Store

IMAGE_BYTES = bytes(range(256)) * 32  # 16 sectors


def _wait_for_machine(runner: DomainRunner, not_this=None, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while runner.machine is None or runner.machine is not_this:
        assert time.monotonic() < deadline, "the domain's machine was not built in time"
        time.sleep(0.01)
    return runner.machine


def _disk(machine):
    return machine.virtio.slots[0].transport.device.backend


def test_writes_outlive_a_reboot_and_not_the_domain(store_env, make_domain, loop_kernel, tmp_path, monkeypatch):
    scratch = tmp_path / "overlays"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    image = tmp_path / "disk.raw"
    image.write_bytes(IMAGE_BYTES)
    disk = (f"    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{image}'/>"
            "<target dev='vda' bus='virtio'/><transient/></disk>\n")
    runner = DomainRunner(Store.open(None), parse_domain(make_domain("transient", loop_kernel, "qemu", disk)), 1)
    seen = {}

    def drive() -> None:  # what a guest and virsh do, from beside the domain's main thread
        try:
            first = _wait_for_machine(runner)
            _disk(first).write(0, b"\x5a" * 512)
            seen["overlays while running"] = len(list(scratch.iterdir()))
            runner.reset()  # virsh reset: the runner builds a new machine
            second = _wait_for_machine(runner, not_this=first)
            seen["after the reboot"] = _disk(second).read(0, 512)
            runner.quit()
        except BaseException as err:  # reported by the main thread's assertions
            seen["error"] = err
            runner.quit()

    helper = threading.Thread(target=drive)
    helper.start()
    assert runner.run() == 0
    helper.join(30)
    assert "error" not in seen, seen.get("error")
    assert seen["overlays while running"] == 1
    assert seen["after the reboot"] == b"\x5a" * 512
    assert list(scratch.iterdir()) == []  # deleted with the domain
    assert image.read_bytes() == IMAGE_BYTES

"""build_default_guest: the initramfs is keyed by its inputs and built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyhv.guestimage import default
from pyhv.guestimage.default import DEFAULT_CMDLINE, build_default_guest, initramfs_key


@pytest.fixture
def packages_in(monkeypatch: pytest.MonkeyPatch, debian_packages):
    """The real fetched packages, whatever cache_dir build_default_guest is given."""
    kernel, busybox = debian_packages
    monkeypatch.setattr(default, "fetch_kernel", lambda root: kernel.vmlinuz.parent)
    monkeypatch.setattr(default, "fetch_busybox", lambda root: busybox)
    return kernel, busybox


def test_builds_once_then_reuses(packages_in, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel, busybox = packages_in
    guest = build_default_guest(tmp_path)
    assert guest.kernel == kernel.vmlinuz and guest.kernel_version == kernel.release
    assert guest.cmdline == DEFAULT_CMDLINE and "console=ttyS0" in guest.cmdline
    assert guest.initrd == tmp_path / "guest" / initramfs_key(kernel, busybox) / "initrd.cpio"
    assert guest.initrd.read_bytes()[:6] == b"070701"
    assert [p.name for p in guest.initrd.parent.iterdir()] == ["initrd.cpio"]  # no temporary left

    def must_not_rebuild(*args, **kwargs):
        raise AssertionError("initramfs rebuilt although cached")

    monkeypatch.setattr(default, "build_initramfs", must_not_rebuild)
    assert build_default_guest(tmp_path) == guest


def test_key_changes_with_each_input(packages_in, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel, busybox = packages_in
    base = initramfs_key(kernel, busybox)
    assert initramfs_key(kernel, busybox) == base
    assert initramfs_key(kernel._replace(package_version="6.1.999-1"), busybox) != base
    assert initramfs_key(kernel, busybox.parent.parent / "busybox-static_2.0" / "busybox") != base
    monkeypatch.setattr(default, "INIT_SCRIPT", default.INIT_SCRIPT + "\n# changed\n")
    changed_script = initramfs_key(kernel, busybox)
    monkeypatch.setattr(default, "GUEST_MODULES", default.GUEST_MODULES + ("virtio_balloon",))
    assert len({base, changed_script, initramfs_key(kernel, busybox)}) == 3

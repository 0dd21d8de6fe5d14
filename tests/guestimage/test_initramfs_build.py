"""The default initramfs: its layout under GNU cpio, its determinism, and the init script."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pyhv.guestimage.debian import GUEST_MODULES
from pyhv.guestimage.exit_tool import build_exit_tool
from pyhv.guestimage.init_script import INIT_SCRIPT, READY_MARKER, STATUS_MARKER
from pyhv.guestimage.initramfs import InitramfsError, build_initramfs
from pyhv.guestimage.modinfo import ModinfoError, index_modules, load_order, modules_alias, modules_dep


@pytest.fixture(scope="module")
def initramfs(debian_packages) -> bytes:
    kernel, busybox = debian_packages
    return build_initramfs(busybox, kernel.modules, kernel.release, GUEST_MODULES)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed (apt-get install cpio)")
@pytest.mark.skipif(os.geteuid() != 0, reason="extracting /dev/console needs root (mknod)")
def test_layout_extracts_with_gnu_cpio(initramfs: bytes, debian_packages, tmp_path: Path) -> None:
    kernel, busybox = debian_packages
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=initramfs,
                   cwd=str(tmp_path), check=True)
    init = tmp_path / "init"
    assert init.read_text() == INIT_SCRIPT and stat.S_IMODE(init.stat().st_mode) == 0o755
    assert (tmp_path / "bin/busybox").read_bytes() == busybox.read_bytes()
    for applet in ("bin/sh", "sbin/insmod", "bin/cttyhack", "usr/bin/setsid", "sbin/poweroff", "bin/stty"):
        assert os.readlink(str(tmp_path / applet)) == "/bin/busybox", applet
    assert not (tmp_path / "linuxrc").exists()
    assert (tmp_path / "sbin/pyhv-exit").read_bytes() == build_exit_tool()
    console = (tmp_path / "dev/console").lstat()
    assert stat.S_ISCHR(console.st_mode) and os.major(console.st_rdev) == 5 and os.minor(console.st_rdev) == 1
    module_dir = tmp_path / "lib/modules" / kernel.release
    index = index_modules(kernel.modules)
    order = load_order(GUEST_MODULES, index)
    assert (module_dir / "modules.dep").read_text() == modules_dep(order, index)
    assert (module_dir / "modules.alias").read_text() == modules_alias(order, index)
    for name in order:
        assert (module_dir / f"{name}.ko").read_bytes() == (kernel.modules / f"{name}.ko").read_bytes()
    assert stat.S_IMODE((tmp_path / "tmp").stat().st_mode) == 0o1777


def test_build_is_byte_identical(initramfs: bytes, debian_packages) -> None:
    kernel, busybox = debian_packages
    assert build_initramfs(busybox, kernel.modules, kernel.release, GUEST_MODULES) == initramfs


def test_init_script_is_valid_busybox_sh() -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox not on the host PATH (apt-get install busybox-static)")
    result = subprocess.run([busybox, "sh", "-n", "-c", INIT_SCRIPT], stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 0, result.stderr
    assert f'echo "{READY_MARKER}"' in INIT_SCRIPT and f'echo "{STATUS_MARKER} $status"' in INIT_SCRIPT


def test_missing_busybox_is_named(debian_packages, tmp_path: Path) -> None:
    kernel, _ = debian_packages
    with pytest.raises(InitramfsError, match=f"cannot read busybox at {tmp_path}/none"):
        build_initramfs(tmp_path / "none", kernel.modules, kernel.release, GUEST_MODULES)


def test_busybox_that_cannot_list_applets_is_refused(debian_packages, tmp_path: Path) -> None:
    kernel, _ = debian_packages
    fake = tmp_path / "busybox"
    fake.write_text("#!/bin/sh\necho 'applet listing disabled' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(InitramfsError, match="--list-full failed \\(status 1\\): applet listing disabled"):
        build_initramfs(fake, kernel.modules, kernel.release, GUEST_MODULES)


def test_missing_module_is_named(debian_packages) -> None:
    kernel, busybox = debian_packages
    with pytest.raises(ModinfoError, match="kernel module virtio_gpu is not in the module tree"):
        build_initramfs(busybox, kernel.modules, kernel.release, ["virtio_gpu"])

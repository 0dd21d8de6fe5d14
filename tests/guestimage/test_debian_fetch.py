"""Fetching Debian packages: resolution, per-version cache entries, atomicity, errors.

A fake apt (FakeApt) stands in for apt-cache/apt-get/dpkg so that every path runs without the
network; the real packages are checked through the session fixture.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from guestimage_elf import module_with_depends
from pyhv.cache import default_cache_dir
from pyhv.errors import ConfigError
from pyhv.guestimage import debian
from pyhv.guestimage.debian import (
    GUEST_MODULES, DebianPackageError, KernelFiles, cached_entries, fetch_busybox,
    fetch_kernel, run_command,
)


class FakeApt:
    """Answers the apt/dpkg commands debian.py runs, and records them."""

    def __init__(self, kernel_version: str = "6.1.99-1", abi: str = "6.1.0-99") -> None:
        self.kernel_version = kernel_version
        self.abi = abi
        self.calls: List[List[str]] = []
        self.fail_download = False
        self.known = True

    @property
    def kernel_package(self) -> str:
        return f"linux-image-{self.abi}-cloud-amd64"

    def __call__(self, args: Sequence[str], cwd: Optional[Path]) -> "subprocess.CompletedProcess[str]":
        args = list(args)
        self.calls.append(args)
        if args[:2] == ["apt-cache", "show"]:
            return self._show(args[-1])
        if args[:2] == ["apt-get", "download"]:
            if self.fail_download:
                return subprocess.CompletedProcess(args, 100, "", "E: Failed to fetch http://deb.debian.org/x  Temporary failure resolving\n")
            package, version = args[2].split("=")
            (Path(cwd) / f"{package}_{version.replace(':', '%3a')}_amd64.deb").write_bytes(b"!<arch>\n")
            return subprocess.CompletedProcess(args, 0, "", "")
        if args[:2] == ["dpkg", "-x"]:
            self._unpack(Path(args[2]).name, Path(args[3]))
            return subprocess.CompletedProcess(args, 0, "", "")
        raise AssertionError(f"unexpected command {args}")

    def _show(self, package: str) -> "subprocess.CompletedProcess[str]":
        fields: Dict[str, str] = {}
        if package == "linux-image-cloud-amd64":
            fields = {"Version": self.kernel_version, "Depends": f"{self.kernel_package} (= {self.kernel_version})"}
        elif package == self.kernel_package:
            fields = {"Version": self.kernel_version, "Depends": "kmod, linux-base (>= 4.3~)"}
        elif package == "busybox-static":
            fields = {"Version": "1:1.35.0-4"}
        if not fields or not self.known:
            return subprocess.CompletedProcess(["apt-cache"], 100, "", f"E: No packages found\n")
        text = f"Package: {package}\n" + "".join(f"{key}: {value}\n" for key, value in fields.items())
        return subprocess.CompletedProcess(["apt-cache"], 0, text + " continuation line\n", "")

    def _unpack(self, deb: str, root: Path) -> None:
        if deb.startswith("busybox-static"):
            (root / "bin").mkdir(parents=True)
            (root / "bin" / "busybox").write_bytes(b"\x7fELF busybox")
            return
        release = f"{self.abi}-cloud-amd64"
        (root / "boot").mkdir(parents=True)
        (root / "boot" / f"vmlinuz-{release}").write_bytes(b"bzImage " + self.kernel_version.encode())
        drivers = root / "lib" / "modules" / release / "kernel" / "drivers"
        drivers.mkdir(parents=True)
        for name in GUEST_MODULES:
            file_name = name.replace("_rng", "-rng")  # like Debian's virtio-rng.ko
            (drivers / f"{file_name}.ko").write_bytes(module_with_depends(name, "virtio"))
        (drivers / "virtio.ko").write_bytes(module_with_depends("virtio", "virtio_ring"))
        (drivers / "virtio_ring.ko").write_bytes(module_with_depends("virtio_ring", ""))
        (drivers / "unrelated.ko").write_bytes(module_with_depends("unrelated", ""))


@pytest.fixture
def apt_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    lists = tmp_path / "apt-lists"
    lists.mkdir()
    monkeypatch.setattr(debian, "APT_LISTS", lists)
    return lists


def apt_update(lists: Path) -> None:
    """What apt-get update does to the lists directory that matters here: its mtime moves."""
    stamp = lists.stat().st_mtime_ns + 1_000_000_000
    os.utime(str(lists), ns=(stamp, stamp))


def test_fetch_keeps_the_kernel_release_and_module_closure(tmp_path: Path, apt_lists: Path) -> None:
    apt = FakeApt()
    entry = fetch_kernel(tmp_path / "cache", runner=apt)
    assert entry == tmp_path / "cache" / "debian" / "linux-image-6.1.0-99-cloud-amd64_6.1.99-1"
    files = KernelFiles.load(entry)
    assert files.release == "6.1.0-99-cloud-amd64" and files.package_version == "6.1.99-1"
    assert files.vmlinuz.read_bytes() == b"bzImage 6.1.99-1"
    kept = sorted(path.name for path in files.modules.iterdir())
    assert kept == sorted(f"{name}.ko" for name in GUEST_MODULES + ("virtio", "virtio_ring"))
    assert [call[:2] for call in apt.calls] == [["apt-cache", "show"], ["apt-cache", "show"],
                                                 ["apt-get", "download"], ["dpkg", "-x"]]
    assert [path.name for path in (tmp_path / "cache" / "debian").iterdir() if path.name.startswith(".")] == []


def test_second_call_runs_no_apt_command(tmp_path: Path, apt_lists: Path) -> None:
    apt = FakeApt()
    first = fetch_kernel(tmp_path, runner=apt), fetch_busybox(tmp_path, runner=apt)
    apt.calls.clear()
    assert (fetch_kernel(tmp_path, runner=apt), fetch_busybox(tmp_path, runner=apt)) == first
    assert apt.calls == []
    assert first[1].name == "busybox" and first[1].parent.name == "busybox-static_1%3a1.35.0-4"


def test_new_kernel_after_apt_update_makes_a_new_entry(tmp_path: Path, apt_lists: Path) -> None:
    apt = FakeApt()
    old = fetch_kernel(tmp_path, runner=apt)
    apt.kernel_version, apt.abi = "6.1.100-1", "6.1.0-100"
    assert fetch_kernel(tmp_path, runner=apt) == old  # lists unchanged: apt not asked
    apt_update(apt_lists)
    new = fetch_kernel(tmp_path, runner=apt)
    assert new != old and new.name == "linux-image-6.1.0-100-cloud-amd64_6.1.100-1"
    assert old.is_dir() and set(cached_entries(tmp_path)) == {old, new}


def test_entry_missing_a_guest_module_is_unpacked_again(tmp_path: Path, apt_lists: Path) -> None:
    # An entry kept before GUEST_MODULES grew (pvpanic_mmio) lacks the new module.
    apt = FakeApt()
    entry = fetch_kernel(tmp_path, runner=apt)
    (entry / "modules" / f"{GUEST_MODULES[-1]}.ko").unlink()
    apt.calls.clear()
    assert fetch_kernel(tmp_path, runner=apt) == entry
    assert (entry / "modules" / f"{GUEST_MODULES[-1]}.ko").is_file()
    assert [call[:2] for call in apt.calls] == [["apt-get", "download"], ["dpkg", "-x"]]
    assert [path.name for path in (tmp_path / "debian").iterdir() if path.name.startswith(".")] == []


def test_failed_download_leaves_no_entry_and_says_what_to_run(tmp_path: Path, apt_lists: Path) -> None:
    apt = FakeApt()
    apt.fail_download = True
    with pytest.raises(DebianPackageError, match=r"apt-get download linux-image-6\.1\.0-99-cloud-amd64=6\.1\.99-1 failed "
                                                 r"\(E: Failed to fetch.*\): check the network.*apt-get update"):
        fetch_kernel(tmp_path, runner=apt)
    leftovers = [path.name for path in (tmp_path / "debian").iterdir() if path.name != "resolved.json"]
    assert leftovers == []
    apt.fail_download = False
    assert fetch_kernel(tmp_path, runner=apt).is_dir()


def test_interrupted_fetch_leaves_no_entry(tmp_path: Path, apt_lists: Path) -> None:
    apt = FakeApt()

    def interrupted(args: Sequence[str], cwd: Optional[Path]) -> "subprocess.CompletedProcess[str]":
        if args[0] == "dpkg":
            raise KeyboardInterrupt
        return apt(args, cwd)

    with pytest.raises(KeyboardInterrupt):
        fetch_kernel(tmp_path, runner=interrupted)
    assert cached_entries(tmp_path) == []
    assert [path.name for path in (tmp_path / "debian").iterdir() if path.name.startswith(".")] == []


def test_unknown_package_is_a_config_error_naming_apt_get_update(tmp_path: Path, apt_lists: Path) -> None:
    apt = FakeApt()
    apt.known = False
    with pytest.raises(ConfigError, match="apt knows no package linux-image-cloud-amd64 .*run 'apt-get update'"):
        fetch_kernel(tmp_path, runner=apt)
    with pytest.raises(ConfigError, match="apt knows no package busybox-static"):
        fetch_busybox(tmp_path, runner=apt)


def test_missing_apt_tool_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DebianPackageError, match="apt-cache not found: .*-kernel and -initrd"):
        run_command(["apt-cache", "show", "busybox-static"])


def test_package_without_a_kernel_is_refused(tmp_path: Path, apt_lists: Path) -> None:
    apt = FakeApt()
    real_unpack = apt._unpack

    def unpack_without_vmlinuz(deb: str, root: Path) -> None:
        real_unpack(deb, root)
        for image in (root / "boot").glob("vmlinuz-*"):
            image.unlink()

    apt._unpack = unpack_without_vmlinuz  # type: ignore[assignment]
    with pytest.raises(DebianPackageError, match=r"has 0 boot/vmlinuz-\* and 1 lib/modules/\*/kernel"):
        fetch_kernel(tmp_path, runner=apt)
    assert cached_entries(tmp_path) == []


def test_damaged_entry_tells_to_clean(tmp_path: Path) -> None:
    with pytest.raises(DebianPackageError, match="damaged.*pyhv guest clean"):
        KernelFiles.load(tmp_path)


def test_cache_dir_honours_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "pyhv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "pyhv"


def test_real_packages_are_cached_by_version(debian_packages) -> None:
    kernel, busybox = debian_packages
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-cloud-amd64", kernel.release)
    assert kernel.vmlinuz.parent.name.endswith("_" + kernel.package_version)
    assert kernel.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"  # Linux boot protocol header
    assert busybox.read_bytes()[:4] == b"\x7fELF"
    calls: List[Sequence[str]] = []

    def recording(args: Sequence[str], cwd: Optional[Path]) -> "subprocess.CompletedProcess[str]":
        calls.append(args)
        return run_command(args, cwd)

    assert KernelFiles.load(fetch_kernel(runner=recording)) == kernel
    assert fetch_busybox(runner=recording) == busybox
    assert [call for call in calls if call[0] != "apt-cache"] == []


def test_without_apt_lists_the_cached_entry_is_used(tmp_path: Path, apt_lists: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    entry = fetch_kernel(tmp_path, runner=FakeApt())
    monkeypatch.setattr(debian, "APT_LISTS", tmp_path / "no-apt-lists")

    def no_apt(args: Sequence[str], cwd: Optional[Path]) -> "subprocess.CompletedProcess[str]":
        raise AssertionError(f"apt used: {args}")

    assert fetch_kernel(tmp_path, runner=no_apt) == entry

"""The Debian packages the default guest is made of, fetched with apt and cached per version.

``fetch_kernel`` takes the kernel package that ``linux-image-cloud-amd64`` depends on;
``fetch_busybox`` takes ``busybox-static``. Each package is downloaded with ``apt-get download``
and unpacked with ``dpkg -x`` in a temporary directory inside the cache, and only what the
guest needs is kept, in ``<cache>/debian/<package>_<version>/``. The entry appears with one
``rename`` once it is complete, so an interrupted fetch never leaves half an entry, and a new
package version makes a new entry beside the old ones.

Which version apt offers is remembered in ``<cache>/debian/resolved.json`` together with the
modification time of apt's package lists; while the lists are unchanged (no ``apt-get update``
since), a cached entry is found without running apt at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from pyhv.cache import default_cache_dir
from pyhv.errors import ConfigError
from pyhv.guestimage.modinfo import ModinfoError, index_modules, load_order

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
APT_LISTS = Path("/var/lib/apt/lists")

# The drivers the default guest carries: virtio transports (PCI, MMIO) and devices. Their
# dependencies (virtio_ring, failover, ...) are added from each module's depends= field; /init
# loads those whose devices the machine has (init_script.py).
# pvpanic_mmio drives QEMU's pvpanic port (ACPI QEMU0001), so a guest panic ends the VM.
# button (CONFIG_ACPI_BUTTON=m in the cloud kernel) turns the ACPI power button into a KEY_POWER
# input event, and evdev (CONFIG_INPUT_EVDEV=m) shows it in /dev/input/event*, where acpid reads it.
GUEST_MODULES = (
    "virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_rng", "virtio_console", "pvpanic_mmio",
    "button", "evdev",
)

# Names inside a cache entry.
KERNEL_IMAGE = "vmlinuz"
KERNEL_RELEASE = "release"
MODULES_DIR = "modules"
PACKAGE_STAMP = "package"
BUSYBOX_BINARY = "busybox"

CommandRunner = Callable[[Sequence[str], Optional[Path]], "subprocess.CompletedProcess[str]"]


class DebianPackageError(ConfigError):
    """A Debian package could not be resolved, downloaded or unpacked."""


class KernelFiles(NamedTuple):
    """A kernel cache entry: the bzImage, its ``uname -r`` string and its guest modules."""

    vmlinuz: Path
    release: str
    modules: Path
    package_version: str

    @classmethod
    def load(cls, entry: Path) -> "KernelFiles":
        try:
            release = (entry / KERNEL_RELEASE).read_text().strip()
            package_version = (entry / PACKAGE_STAMP).read_text().split()[1]
        except (OSError, IndexError) as err:
            raise DebianPackageError(f"kernel cache entry {entry} is damaged ({err}): run 'pyhv guest clean'") from err
        return cls(entry / KERNEL_IMAGE, release, entry / MODULES_DIR, package_version)


def run_command(args: Sequence[str], cwd: Optional[Path] = None) -> "subprocess.CompletedProcess[str]":
    """Run an apt/dpkg tool, capturing its output; a missing tool is a DebianPackageError."""
    try:
        return subprocess.run(
            list(args), cwd=None if cwd is None else str(cwd),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False,
        )
    except FileNotFoundError as err:
        raise DebianPackageError(
            f"{args[0]} not found: pyhv builds its default guest from Debian packages with apt; "
            f"on a host without apt, give the guest with -kernel and -initrd"
        ) from err


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _entry_name(package: str, version: str) -> str:
    return f"{package}_{version.replace(':', '%3a')}"


# -- which package and version apt offers --------------------------------------------------


def _show(package: str, runner: CommandRunner) -> Dict[str, str]:
    result = runner(["apt-cache", "show", "--no-all-versions", package], None)
    if result.returncode != 0 or not result.stdout.strip():
        raise DebianPackageError(
            f"apt knows no package {package} ({_last_line(result.stderr)}): "
            f"run 'apt-get update' and check that /etc/apt/sources.list has Debian's main component"
        )
    fields: Dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith(" "):
            fields.setdefault(key, value.strip())
    return fields


def _resolve_kernel(runner: CommandRunner) -> Tuple[str, str]:
    depends = _show(KERNEL_METAPACKAGE, runner).get("Depends", "")
    for alternative in depends.replace("|", ",").split(","):
        words = alternative.split()
        if words and words[0].startswith("linux-image-"):
            package = words[0]
            return package, _resolve_version(package, runner)
    raise DebianPackageError(
        f"{KERNEL_METAPACKAGE} depends on no linux-image package (Depends: {depends or 'empty'}): run 'apt-get update'"
    )


def _resolve_version(package: str, runner: CommandRunner) -> str:
    version = _show(package, runner).get("Version")
    if not version:
        raise DebianPackageError(f"apt-cache show {package} gives no Version: run 'apt-get update'")
    return version


def _lists_stamp() -> Optional[int]:
    try:
        return APT_LISTS.stat().st_mtime_ns
    except OSError:
        return None


def _resolve(key: str, resolver: Callable[[], Tuple[str, str]], debian_dir: Path) -> Tuple[str, str]:
    """(package, version) for ``key``, from the memo while apt's lists are unchanged."""
    memo_path = debian_dir / "resolved.json"
    stamp = _lists_stamp()
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict) or not isinstance(memo.get("packages"), dict):
        memo = {"stamp": stamp, "packages": {}}
    # Without apt's lists (apt removed, or a copied cache) the last answer is the best one.
    if memo.get("stamp") != stamp and stamp is not None:
        memo = {"stamp": stamp, "packages": {}}
    known = memo["packages"].get(key)
    if isinstance(known, list) and len(known) == 2 and (debian_dir / _entry_name(*known)).is_dir():
        return known[0], known[1]
    package, version = resolver()
    memo["packages"][key] = [package, version]
    debian_dir.mkdir(parents=True, exist_ok=True)
    scratch = debian_dir / f".resolved-{os.getpid()}.json"
    scratch.write_text(json.dumps(memo, indent=1, sort_keys=True))
    os.replace(str(scratch), str(memo_path))
    return package, version


# -- download, unpack, keep ----------------------------------------------------------------


def _fetch(
    package: str, version: str, debian_dir: Path, keep: Callable[[Path, Path], None], runner: CommandRunner
) -> Path:
    entry = debian_dir / _entry_name(package, version)
    if entry.is_dir():
        return entry
    debian_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=str(debian_dir)))
    try:
        result = runner(["apt-get", "download", f"{package}={version}"], scratch)
        debs = sorted(scratch.glob("*.deb"))
        if result.returncode != 0 or len(debs) != 1:
            raise DebianPackageError(
                f"apt-get download {package}={version} failed ({_last_line(result.stderr)}): "
                f"check the network connection and run 'apt-get update'"
            )
        unpacked = scratch / "root"
        result = runner(["dpkg", "-x", str(debs[0]), str(unpacked)], None)
        if result.returncode != 0:
            raise DebianPackageError(f"dpkg -x {debs[0].name} failed: {_last_line(result.stderr)}")
        staged = scratch / "entry"
        staged.mkdir()
        keep(unpacked, staged)
        (staged / PACKAGE_STAMP).write_text(f"{package} {version}\n")
        try:
            os.rename(str(staged), str(entry))
        except OSError:
            if not entry.is_dir():  # not a concurrent fetch that got there first
                raise
    finally:
        shutil.rmtree(str(scratch), ignore_errors=True)
    return entry


def _keep_kernel(unpacked: Path, staged: Path) -> None:
    images = sorted((unpacked / "boot").glob("vmlinuz-*"))
    module_roots = sorted((unpacked / "lib" / "modules").glob("*/kernel"))
    if len(images) != 1 or len(module_roots) != 1:
        raise DebianPackageError(
            f"kernel package unpacked in {unpacked} has {len(images)} boot/vmlinuz-* and "
            f"{len(module_roots)} lib/modules/*/kernel, expected one of each"
        )
    release = module_roots[0].parent.name
    shutil.copyfile(str(images[0]), str(staged / KERNEL_IMAGE))
    (staged / KERNEL_RELEASE).write_text(release + "\n")
    modules = staged / MODULES_DIR
    modules.mkdir()
    index = index_modules(module_roots[0])
    try:
        needed = load_order(GUEST_MODULES, index)
    except ModinfoError as err:
        raise DebianPackageError(f"kernel package {release}: {err}") from err
    for name in needed:
        shutil.copyfile(str(index[name]), str(modules / f"{name}.ko"))


def _keep_busybox(unpacked: Path, staged: Path) -> None:
    binary = unpacked / "bin" / "busybox"
    if not binary.is_file():
        raise DebianPackageError(f"{BUSYBOX_PACKAGE} unpacked in {unpacked} has no bin/busybox")
    shutil.copyfile(str(binary), str(staged / BUSYBOX_BINARY))
    os.chmod(str(staged / BUSYBOX_BINARY), 0o755)


def fetch_kernel(cache_dir: Optional[Path] = None, runner: CommandRunner = run_command) -> Path:
    """The cache entry of the current Debian cloud kernel, fetched if absent (see KernelFiles)."""
    debian_dir = Path(cache_dir or default_cache_dir()) / "debian"
    package, version = _resolve(KERNEL_METAPACKAGE, lambda: _resolve_kernel(runner), debian_dir)
    entry = _fetch(package, version, debian_dir, _keep_kernel, runner)
    if not _has_guest_modules(entry):
        # Kept by an older pyhv whose GUEST_MODULES were fewer: unpack the package again.
        stale = debian_dir / f".stale-{os.getpid()}-{entry.name}"
        os.rename(str(entry), str(stale))
        shutil.rmtree(str(stale), ignore_errors=True)
        entry = _fetch(package, version, debian_dir, _keep_kernel, runner)
    return entry


def _has_guest_modules(entry: Path) -> bool:
    try:
        load_order(GUEST_MODULES, index_modules(entry / MODULES_DIR))
    except ModinfoError:
        return False
    return True


def fetch_busybox(cache_dir: Optional[Path] = None, runner: CommandRunner = run_command) -> Path:
    """The static busybox binary of the current ``busybox-static`` package, fetched if absent."""
    debian_dir = Path(cache_dir or default_cache_dir()) / "debian"
    resolver = lambda: (BUSYBOX_PACKAGE, _resolve_version(BUSYBOX_PACKAGE, runner))  # noqa: E731
    package, version = _resolve(BUSYBOX_PACKAGE, resolver, debian_dir)
    return _fetch(package, version, debian_dir, _keep_busybox, runner) / BUSYBOX_BINARY


def cached_entries(cache_dir: Optional[Path] = None) -> List[Path]:
    """Every complete package entry in the cache, oldest name first."""
    debian_dir = Path(cache_dir or default_cache_dir()) / "debian"
    if not debian_dir.is_dir():
        return []
    return sorted(path for path in debian_dir.iterdir() if path.is_dir() and not path.name.startswith("."))

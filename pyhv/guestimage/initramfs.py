"""The default guest's initramfs: busybox, its applets, the virtio modules and ``/init``.

Layout of the archive (all owned by 0:0):

- ``/bin/busybox`` and one symlink to it per applet, where ``busybox --list-full`` puts it;
- ``/sbin/pyhv-exit`` (exit_tool.py) and ``/init`` (init_script.py);
- ``/etc/acpi/PWRF/00000080``, the power-button handler busybox ``acpid`` runs (init_script.py),
  and ``/var/log`` for acpid's log;
- ``/lib/modules/<release>/<module>.ko``, with the ``modules.dep`` and ``modules.alias`` that
  busybox ``modprobe`` reads (from the modules' ``.modinfo`` sections), and ``modules.alias.sh``,
  the aliases as a shell function, with which ``/init`` loads the drivers of the devices the
  machine has;
- ``/dev/console``: the kernel opens it for init's stdio before ``/init`` can mount devtmpfs;
- empty ``/proc``, ``/sys``, ``/tmp``, ``/root``, ``/etc/profile`` for the shell's prompt.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterable, List, Optional

from pyhv.errors import BootError
from pyhv.guestimage.cpio import CpioWriter, compress
from pyhv.guestimage.exit_tool import build_exit_tool
from pyhv.guestimage.init_script import (
    EXIT_TOOL_PATH, INIT_SCRIPT, MODULES_ALIAS_NAME, MODULES_ALIAS_SHELL_NAME, MODULES_DEP_NAME,
    POWER_BUTTON_HANDLER, POWER_BUTTON_HANDLER_PATH,
)
from pyhv.guestimage.modinfo import alias_case_function, index_modules, load_order, modules_alias, modules_dep

CONSOLE_MAJOR, CONSOLE_MINOR = 5, 1
PROFILE = "PS1='\\h:\\w\\$ '\nexport PS1\n"
# busybox lists linuxrc for initrd-style boots; an initramfs runs /init instead.
SKIPPED_APPLETS = frozenset(["linuxrc"])


class InitramfsError(BootError):
    """The default initramfs cannot be assembled from the given files."""


def busybox_applets(busybox: Path) -> List[str]:
    """Install paths of busybox's applets (``bin/sh``, ``usr/bin/[``, ...), from ``--list-full``.

    The Debian binary is static, so the host runs it directly.
    """
    try:
        result = subprocess.run(
            [str(busybox), "--list-full"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, check=False,
        )
    except OSError as err:
        raise InitramfsError(f"cannot run {busybox} --list-full: {err.strerror}") from err
    applets = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not applets:
        raise InitramfsError(f"{busybox} --list-full failed (status {result.returncode}): {result.stderr.strip()}")
    return applets


def build_initramfs(
    busybox: Path,
    modules_dir: Path,
    release: str,
    wanted_modules: Iterable[str],
    compression: Optional[str] = None,
) -> bytes:
    """The initramfs bytes for a kernel of ``uname -r`` ``release`` whose modules lie in ``modules_dir``."""
    try:
        busybox_bytes = Path(busybox).read_bytes()
    except OSError as err:
        raise InitramfsError(f"cannot read busybox at {busybox}: {err.strerror}") from err
    index = index_modules(Path(modules_dir))
    order = load_order(wanted_modules, index)

    archive = CpioWriter()
    for directory in ("dev", "proc", "sys", "root", "etc", "etc/acpi", "etc/acpi/PWRF", "bin", "sbin",
                      "usr/bin", "usr/sbin", "var", "var/log", "var/run"):
        archive.add_directory(directory)
    archive.add_directory("tmp", mode=0o1777)
    archive.add_device("dev/console", "c", CONSOLE_MAJOR, CONSOLE_MINOR, mode=0o600)
    archive.add_file("bin/busybox", busybox_bytes, mode=0o755)
    for applet in busybox_applets(Path(busybox)):
        name = applet.strip("/")
        if name in SKIPPED_APPLETS or name == "bin/busybox":
            continue
        archive.add_symlink(name, "/bin/busybox")
    archive.add_file(EXIT_TOOL_PATH, build_exit_tool(), mode=0o755)
    archive.add_file("etc/profile", PROFILE.encode(), mode=0o644)
    archive.add_file(POWER_BUTTON_HANDLER_PATH, POWER_BUTTON_HANDLER.encode(), mode=0o755)

    module_root = f"lib/modules/{release}"
    archive.add_directory(module_root)
    for name in order:
        archive.add_file(f"{module_root}/{name}.ko", index[name].read_bytes(), mode=0o644)
    archive.add_file(f"{module_root}/{MODULES_DEP_NAME}", modules_dep(order, index).encode())
    archive.add_file(f"{module_root}/{MODULES_ALIAS_NAME}", modules_alias(order, index).encode())
    archive.add_file(f"{module_root}/{MODULES_ALIAS_SHELL_NAME}", alias_case_function(order, index).encode())

    archive.add_file("init", INIT_SCRIPT.encode(), mode=0o755)
    return compress(archive.finish(), compression)

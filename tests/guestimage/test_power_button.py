"""The default guest acts on the ACPI power button: modules, acpid, the handler busybox runs."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from pyhv.guestimage import default
from pyhv.guestimage.debian import GUEST_MODULES
from pyhv.guestimage.default import initramfs_key
from pyhv.guestimage.init_script import (
    ACPID_LOG_PATH, INIT_SCRIPT, MODULES_ALIAS_NAME, MODULES_DEP_NAME, POWER_BUTTON_HANDLER, POWER_BUTTON_HANDLER_PATH,
    POWER_BUTTON_MARKER, READY_MARKER,
)
from pyhv.guestimage.initramfs import build_initramfs
from test_cpio_writer import parse_newc

EV_KEY, KEY_POWER = 0x01, 116


@pytest.fixture(scope="module")
def entries(debian_packages):
    kernel, busybox = debian_packages
    image = build_initramfs(busybox, kernel.modules, kernel.release, GUEST_MODULES)
    return {name: (fields, data) for name, fields, data in parse_newc(image)}


def test_button_and_evdev_are_loaded_by_init(entries, debian_packages) -> None:
    """The ACPI power button device (LNXPWRBN) names button, the input device it adds names evdev."""
    kernel, _ = debian_packages
    module_dir = f"lib/modules/{kernel.release}"
    aliases = entries[f"{module_dir}/{MODULES_ALIAS_NAME}"][1].decode().splitlines()
    assert "alias acpi*:LNXPWRBN:* button" in aliases
    assert "alias input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev" in aliases
    dep = entries[f"{module_dir}/{MODULES_DEP_NAME}"][1].decode().splitlines()
    for module in ("button", "evdev"):
        assert f"{module}.ko:" in dep
        fields, data = entries[f"{module_dir}/{module}.ko"]
        assert data[:4] == b"\x7fELF" and fields["filesize"] == len(data) > 0


def test_handler_lies_where_acpid_looks_and_is_executable(entries) -> None:
    fields, data = entries[POWER_BUTTON_HANDLER_PATH]
    assert stat.S_ISREG(fields["mode"]) and stat.S_IMODE(fields["mode"]) == 0o755
    assert data == POWER_BUTTON_HANDLER.encode() and data.startswith(b"#!/bin/sh\n")
    assert POWER_BUTTON_MARKER in POWER_BUTTON_HANDLER and "poweroff -f" in POWER_BUTTON_HANDLER
    log_dir = entries[os.path.dirname(ACPID_LOG_PATH)][0]
    assert stat.S_ISDIR(log_dir["mode"])
    acpid = entries["sbin/acpid"]
    assert stat.S_ISLNK(acpid[0]["mode"]) and acpid[1] == b"/bin/busybox"


def test_init_starts_acpid_between_the_modules_and_the_ready_marker() -> None:
    modules_loaded = INIT_SCRIPT.index("modprobe -a $wanted")
    acpid = INIT_SCRIPT.index(f"acpid -l /{ACPID_LOG_PATH}")
    ready = INIT_SCRIPT.index(f'echo "{READY_MARKER}"')
    assert modules_loaded < acpid < ready


def test_handler_is_valid_busybox_sh(debian_packages) -> None:
    _, busybox = debian_packages
    result = subprocess.run([str(busybox), "sh", "-n", "-c", POWER_BUTTON_HANDLER],
                            stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 0, result.stderr


def test_changing_the_handler_changes_the_cache_key(debian_packages, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel, busybox = debian_packages
    base = initramfs_key(kernel, busybox)
    monkeypatch.setattr(default, "POWER_BUTTON_HANDLER", POWER_BUTTON_HANDLER + "# changed\n")
    assert initramfs_key(kernel, busybox) != base


def _input_event(kind: int, code: int, value: int) -> bytes:
    """struct input_event on x86-64: struct timeval (two longs), __u16 type, __u16 code, __s32 value."""
    return struct.pack("<qqHHi", 0, 0, kind, code, value)


# In a private mount namespace, a FIFO stands in for /dev/input/event0: acpid opens event0,
# event1, ... until one is missing, exactly as in the guest.
NAMESPACE_SCRIPT = r"""
set -e
mount -t tmpfs pyhv-test /dev
mknod -m 666 /dev/null c 1 3
mkdir /dev/input
mkfifo /dev/input/event0
"$BUSYBOX" acpid -f -d -c "$CONF" -a /nonexistent -M /nonexistent -p "$WORK/acpid.pid" &
"$BUSYBOX" cat "$WORK/events" > /dev/input/event0
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    [ -e "$WORK/pressed" ] && break
    "$BUSYBOX" sleep 0.1
done
kill $!
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a private /dev needs root (mount namespace)")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
def test_busybox_acpid_runs_the_handler_path_on_key_power(debian_packages, tmp_path: Path) -> None:
    """The guest's own busybox maps a KEY_POWER press on an evdev to /etc/acpi/PWRF/00000080."""
    _, busybox = debian_packages
    conf = tmp_path / "etc-acpi"
    handler = conf / os.path.relpath(POWER_BUTTON_HANDLER_PATH, "etc/acpi")
    handler.parent.mkdir(parents=True)
    handler.write_text(f'#!{busybox} sh\necho "$0" > "{tmp_path}/pressed"\n')
    handler.chmod(0o755)
    (tmp_path / "events").write_bytes(_input_event(EV_KEY, KEY_POWER, 1) + _input_event(EV_KEY, KEY_POWER, 0))
    env = dict(os.environ, BUSYBOX=str(busybox), CONF=str(conf), WORK=str(tmp_path))
    result = subprocess.run(["unshare", "-m", "--propagation", "private", str(busybox), "sh", "-c", NAMESPACE_SCRIPT],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                            timeout=30)
    if result.returncode != 0 and "unshare failed" in result.stdout:
        pytest.skip(f"no mount namespace here: {result.stdout.strip()}")
    pressed = tmp_path / "pressed"
    assert pressed.is_file(), result.stdout
    assert pressed.read_text().strip() == "./PWRF/00000080", result.stdout

"""`pyhv run` end to end as a user meets it: bad input is one line on stderr and a non-zero exit."""

import os
import subprocess
import sys

import pytest

from pyhv.kvm.system import kvm_available

needs_kvm = pytest.mark.skipif(kvm_available() is not None, reason=f"needs /dev/kvm: {kvm_available()}")


def pyhv(*args, env=None, timeout=60):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "pyhv", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


def assert_clean_error(result, text):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert text in result.stderr, result.stderr
    assert result.stderr.startswith("pyhv: ")


@pytest.fixture
def fake_bzimage(tmp_path):
    """A bzImage header that promises far more than the file holds."""
    header = bytearray(0x400)
    header[0x1F1] = 4  # setup_sects
    header[0x1FE:0x200] = b"\x55\xaa"
    header[0x202:0x206] = b"HdrS"
    header[0x206:0x208] = (0x020F).to_bytes(2, "little")
    header[0x1F4:0x1F8] = (0x100000).to_bytes(4, "little")  # syssize (16-byte units): 16 MiB
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(header))
    return path


def test_version_and_help():
    assert pyhv("--version").stdout.startswith("pyhv ")
    result = pyhv("run", "-help")
    assert result.returncode == 0 and "-kernel" in result.stdout


def test_unknown_command():
    result = pyhv("frobnicate")
    assert result.returncode == 2 and "unknown command 'frobnicate'" in result.stderr


def test_unknown_option():
    assert_clean_error(pyhv("run", "-kernel", "x", "-vga", "std"), "unsupported option '-vga'")


@needs_kvm
def test_kernel_that_is_not_a_kernel(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a kernel\n" * 100)
    assert_clean_error(pyhv("run", "-accel", "kvm", "-kernel", str(text)), str(text))


@needs_kvm
def test_missing_kernel(tmp_path):
    assert_clean_error(pyhv("run", "-accel", "kvm", "-kernel", str(tmp_path / "nope")), "nope")


@needs_kvm
def test_truncated_bzimage(fake_bzimage):
    assert_clean_error(pyhv("run", "-accel", "kvm", "-kernel", str(fake_bzimage)), str(fake_bzimage))


@needs_kvm
def test_missing_initrd(guest_path, tmp_path):
    missing = tmp_path / "initrd.cpio"
    assert_clean_error(pyhv("run", "-accel", "kvm", "-kernel", str(guest_path("hello")), "-initrd", str(missing)),
                       "initrd.cpio")


def test_memory_larger_than_host():
    assert_clean_error(pyhv("run", "-m", "64T", "-kernel", "k"), "more than this host")


def test_no_kvm_device(tmp_path):
    result = pyhv("run", "-accel", "kvm", "-kernel", "k", env={"PYHV_KVM_DEVICE": str(tmp_path / "kvm")})
    assert_clean_error(result, "does not exist")


def test_no_permission_on_kvm(monkeypatch, capsys):
    """Root ignores file modes, so the EACCES a normal user would meet is injected."""
    from pyhv import cli
    from pyhv.kvm import system

    def deny(path, flags, *args):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(system.os, "open", deny)
    status = cli.main(["run", "-accel", "kvm", "-kernel", "k"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("pyhv: ") and "no permission to open /dev/kvm" in err


class _FakeGuest:
    kernel = "/cache/vmlinuz"
    initrd = "/cache/initrd.cpio"
    cmdline = "console=ttyS0 quiet"


def _fake_guest_run(monkeypatch, stop):
    from pyhv import cli
    from pyhv import guestimage

    seen = {}

    def fake_run_config(config):
        seen["config"] = config
        return stop.status, stop

    monkeypatch.setattr(guestimage, "build_default_guest", lambda: _FakeGuest())
    monkeypatch.setattr(cli, "run_config", fake_run_config)
    return cli, seen


def test_guest_run_passes_the_command_and_returns_its_status(monkeypatch):
    from pyhv.lifecycle import Shutdown

    # The guest's /init wrote 3 to isa-debug-exit: the VM's status is (3 << 1) | 1.
    cli, seen = _fake_guest_run(monkeypatch, Shutdown(7, "isa-debug-exit: guest wrote 0x3 (1 bytes)"))
    assert cli.main(["guest", "run", "-m", "512", "--", "cat", "/proc/cpuinfo"]) == 3
    config = seen["config"]
    assert config.append == 'console=ttyS0 quiet -- "cat /proc/cpuinfo"'
    assert str(config.kernel) == _FakeGuest.kernel and str(config.initrd) == _FakeGuest.initrd
    assert config.accel == ("kvm", "tcg")
    assert config.ram_size == 512 << 20  # the user's options come after the defaults and win


def test_guest_run_without_a_command_keeps_other_exit_statuses(monkeypatch):
    from pyhv.lifecycle import Shutdown

    cli, seen = _fake_guest_run(monkeypatch, Shutdown(0, "ACPI power-off"))
    assert cli.main(["guest", "run", "-accel", "tcg"]) == 0
    assert " -- " not in seen["config"].append and seen["config"].accel == ("tcg",)


def test_guest_run_keeps_a_command_with_quotes_as_it_is_and_refuses_one_too_long(monkeypatch):
    from pyhv.lifecycle import Shutdown

    cli, seen = _fake_guest_run(monkeypatch, Shutdown(1, "isa-debug-exit: guest wrote 0x0 (1 bytes)"))
    assert cli.main(["guest", "run", "--", 'echo "a b"']) == 0
    assert seen["config"].append.endswith(' -- echo "a b"')
    seen.clear()
    words = ['echo "x"'] + ["w"] * 40
    assert cli.main(["guest", "run", "--"] + words) == 1  # a clear error, the VM not started
    assert "config" not in seen


def test_guest_run_append_adds_to_the_default_command_line(monkeypatch):
    from pyhv.lifecycle import Shutdown

    # Replacing it would drop the console and the command: a VM running silently forever.
    cli, seen = _fake_guest_run(monkeypatch, Shutdown(1, "isa-debug-exit: guest wrote 0x0 (1 bytes)"))
    assert cli.main(["guest", "run", "-append", "loglevel=7", "--append=panic=0", "-m", "512",
                     "--", "uname", "-r"]) == 0
    config = seen["config"]
    assert config.append == 'console=ttyS0 quiet loglevel=7 panic=0 -- "uname -r"'
    assert config.ram_size == 512 << 20
    seen.clear()
    assert cli.main(["guest", "run", "-append"]) == 1  # no value: a clear error, no VM
    assert "config" not in seen


_BAD_TCG_SETTINGS = [("PYHV_TCG_TRANSLATE_AFTER", "soon"), ("PYHV_TCG_TRANSLATE_AFTER", "-5"),
                     ("PYHV_TCG_COMPILE_HELPER", "yes")]
if sys.implementation.name == "pypy":  # PyPy's JIT parameters are read on PyPy only
    _BAD_TCG_SETTINGS.append(("PYHV_PYPY_JIT", "no_such_parameter=3"))


@pytest.mark.parametrize("name, value", _BAD_TCG_SETTINGS)
def test_bad_software_cpu_settings(guest_path, name, value):
    text = f"{name}={value!r}"
    result = pyhv("run", "-accel", "tcg", "-m", "16", "-no-reboot", "-kernel", str(guest_path("hello")),
                  env={name: value})
    assert_clean_error(result, text)


def test_only_pyhv_as_the_program_restarts_for_the_runtime_settings(monkeypatch, capsys) -> None:
    """`pyhv run` started as a program may restart itself (runtime_env.py); a caller passing
    argv (a test, an embedding program) is never replaced."""
    import pyhv.cli as cli

    restarts = []
    monkeypatch.setattr(cli, "restart_with_vm_env", restarts.append)
    monkeypatch.setattr(sys, "argv", ["pyhv", "run", "-h"])
    assert cli.main() == 0
    assert cli.main(["run", "-h"]) == 0
    monkeypatch.setattr(sys, "argv", ["pyhv", "guest", "path"])
    monkeypatch.setitem(cli.COMMANDS, "guest", lambda args: 0)
    assert cli.main() == 0
    assert restarts == [cli.pyhv_argv(["run", "-h"])]
    capsys.readouterr()

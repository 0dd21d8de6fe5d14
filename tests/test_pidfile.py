"""-pidfile: the VM process's PID, locked while it runs, removed at exit (pyhv/pidfile.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pyhv.errors import ConfigError
from pyhv.pidfile import PidFile


def test_the_file_holds_the_pid_while_open_and_is_gone_after(tmp_path):
    path = tmp_path / "vm.pid"
    path.write_text("999999\nleft by a killed VM\n")  # no lock on it: reused
    pidfile = PidFile(str(path))
    assert path.read_text() == f"{os.getpid()}\n"
    pidfile.close()
    assert not path.exists()
    pidfile.close()  # twice is harmless


def test_a_second_vm_on_the_same_file_is_refused_while_the_first_runs(tmp_path):
    path = tmp_path / "vm.pid"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pyhv.pidfile import PidFile
        PidFile({str(path)!r})
        print("locked", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(ConfigError, match="locked by another process: is that VM still running"):
            PidFile(str(path))
        assert path.read_text() == f"{holder.pid}\n"  # the refused one did not touch it
    finally:
        holder.communicate("", timeout=30)


def test_an_unwritable_place_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"-pidfile .*/missing/vm.pid: cannot open: No such file or directory"):
        PidFile(str(tmp_path / "missing" / "vm.pid"))

"""PyPy's GC and malloc settings for VM processes (pyhv/runtime_env.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyhv
from pyhv import runtime_env
from pyhv.runtime_env import PYPY_SETTINGS, needs_restart, vm_env


def test_vm_env_adds_the_settings_and_keeps_the_users_own() -> None:
    env = vm_env({"PATH": "/bin", "PYPY_GC_NURSERY": "8MB"})
    assert env["PATH"] == "/bin"
    assert env["PYPY_GC_NURSERY"] == "8MB"  # the user's choice wins
    assert env["PYPY_GC_MAJOR_COLLECT"] == PYPY_SETTINGS["PYPY_GC_MAJOR_COLLECT"]


def test_only_pypy_without_every_setting_restarts() -> None:
    assert needs_restart({}, "PyPy")
    assert needs_restart({"PYPY_GC_NURSERY": "16MB"}, "PyPy")
    assert not needs_restart(dict(PYPY_SETTINGS), "PyPy")  # restarted already: no loop
    assert not needs_restart({}, "CPython")


def test_restart_replaces_the_process_with_the_settings_and_the_same_pyhv(tmp_path: Path) -> None:
    # The restarted command reports what it was started with.
    child = textwrap.dedent("""
        import os, sys
        from pyhv import runtime_env
        runtime_env.needs_restart = lambda: True
        report = "import os; print(os.getpid(), os.environ['PYPY_GC_NURSERY'], os.environ['PYPY_GC_MAJOR_COLLECT'], os.environ['GLIBC_TUNABLES'], os.environ['PYTHONPATH'])"
        print(os.getpid(), flush=True)
        runtime_env.restart_with_vm_env([sys.executable, "-c", report])
        print("not restarted")
    """)
    env = {"PATH": "/usr/bin:/bin", "PYPY_GC_NURSERY": "8MB", "PYTHONPATH": str(Path(pyhv.__file__).parent.parent)}
    result = subprocess.run([sys.executable, "-c", child], stdout=subprocess.PIPE, universal_newlines=True,
                            env=env, cwd=str(tmp_path), check=True, timeout=60)
    before, after = result.stdout.splitlines()
    pid, nursery, major, tunables, path = after.split()
    assert pid == before  # exec: the same process
    assert nursery == "8MB" and major == PYPY_SETTINGS["PYPY_GC_MAJOR_COLLECT"]
    assert tunables == "glibc.malloc.hugetlb=1"
    assert path.split(":")[0] == str(Path(runtime_env.__file__).resolve().parent.parent)


def test_usable_cpu_ids_reads_the_affinity_mask_where_os_has_no_sched_getaffinity(tmp_path, monkeypatch):
    # PyPy 3.9's os has no sched_getaffinity: the mask comes from /proc/self/status.
    import pyhv.runtime_env as runtime_env

    monkeypatch.delattr(runtime_env.os, "sched_getaffinity", raising=False)
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCpus_allowed:\t00000000,0000000a\nCpus_allowed_list:\t1,3\n")
    assert runtime_env.usable_cpu_ids(str(status)) == [1, 3]
    status.write_text("Name:\tpython\n")  # no mask: every CPU the machine has
    assert runtime_env.usable_cpu_ids(str(status)) == list(range(runtime_env.os.cpu_count() or 1))

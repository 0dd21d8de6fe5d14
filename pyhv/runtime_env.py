"""What a VM process wants from its Python runtime before it starts: PyPy's GC settings, and
huge pages for its heap.

PyPy reads its garbage collector's settings from the environment at start-up only. Its
defaults (a nursery the size of the L2 cache, here 1 MB, and a major collection each time the
heap grows by 1.82x) suit programs with little long-lived data; the software CPU keeps
hundreds of megabytes of it (decoded blocks, translated code) and allocates fast. Measured
on the Debian boot (bench/tcg_kernel.py, PyPy, side by side): 7.2 s of 46.8 s in the GC with
the defaults, 2.1 s of 42.6 s with a 16 MB nursery and major collections at 3x (peak memory
610 -> 667 MB); a 32 MB nursery gained no more, and 128 MB cost 1.1 GB. Later (2026-11-26,
a 30 s boot, GC minor collections 1.1 s of it): 64 MB against 16 MB, faster in seven pairs of
seven side by side by 0.1-3.0 s (mean about 0.9 s, 3%), peak memory 532 -> 713 MB; 32 MB
gained less than 64 (0.2 and 0.4 s behind it), 128 MB no more.

glibc's ``malloc.hugetlb=1`` tunable (read by the dynamic loader, so also at start-up only)
has malloc ask for transparent huge pages on the memory it maps, which is where PyPy's nursery
and heap live (guest RAM asks for its own, pyhv/memory.py): faster in 7 of 8 pairs of Debian
boots side by side (bench/ab_boot.py, 2026-11-28, mean 0.5 s of 33-37), peak memory 686 ->
693 MB.

``pyhv run`` and ``pyhv guest run`` on PyPy restart themselves once with these settings
(:func:`restart_with_vm_env`), and so does bench/tcg_kernel.py; processes pyhv starts itself (``virsh start``) get them in
their environment (:func:`vm_env`). A setting already in the environment is left alone, so
a user can choose another. CPython ignores them.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional

#: This process runs on PyPy (its JIT, GC and integer model differ from CPython's): the one
#: test of the runtime that code paths tuned for one or the other ask.
ON_PYPY = platform.python_implementation() == "PyPy"

PYPY_SETTINGS: Dict[str, str] = {"PYPY_GC_NURSERY": "64MB", "PYPY_GC_MAJOR_COLLECT": "3",
                                 "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def usable_cpu_ids(status_path: str = "/proc/self/status") -> List[int]:
    """The CPUs this process may run on, by number (its affinity mask, as ``taskset`` sets it)."""
    getaffinity = getattr(os, "sched_getaffinity", None)  # PyPy 3.9 has none
    if getaffinity is not None:
        return sorted(getaffinity(0))
    try:
        with open(status_path) as status:
            for line in status:
                if line.startswith("Cpus_allowed:"):
                    mask = int(line.split()[1].replace(",", ""), 16)
                    return [cpu for cpu in range(mask.bit_length()) if mask >> cpu & 1]
    except (OSError, ValueError):
        pass
    return list(range(os.cpu_count() or 1))


def usable_cpus() -> int:
    """How many CPUs this process may run on (see :func:`usable_cpu_ids`)."""
    return len(usable_cpu_ids())


def vm_env(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``base`` (default: this process's environment) with the settings it lacks added."""
    env = dict(os.environ if base is None else base)
    for name, value in PYPY_SETTINGS.items():
        env.setdefault(name, value)
    return env


def needs_restart(environ: Optional[Mapping[str, str]] = None,
                  implementation: Optional[str] = None) -> bool:
    """True on PyPy when a setting is missing from the environment it started with."""
    environ = os.environ if environ is None else environ
    implementation = platform.python_implementation() if implementation is None else implementation
    return implementation == "PyPy" and any(name not in environ for name in PYPY_SETTINGS)


def pyhv_argv(args: List[str]) -> List[str]:
    """This interpreter running ``pyhv ARGS``."""
    return [sys.executable, "-m", "pyhv"] + list(args)


def restart_with_vm_env(argv: List[str]) -> None:
    """On PyPy without the settings, replace this process by ``argv`` (an interpreter first)
    run with them; the process keeps its PID and its file descriptors. Returns only when no
    restart is needed."""
    if not needs_restart():
        return
    env = vm_env()
    # The same pyhv, wherever it was imported from: its parent directory goes first on the path.
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)

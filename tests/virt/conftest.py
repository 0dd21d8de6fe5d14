"""Fixtures for the management tests: a temporary store, the loop guest, a virsh runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"


@pytest.fixture
def store_env(tmp_path, monkeypatch):
    """PYHV_CONFIG_DIR/PYHV_RUNTIME_DIR pointing at fresh temporary directories."""
    config, runtime = tmp_path / "etc", tmp_path / "run"
    monkeypatch.setenv("PYHV_CONFIG_DIR", str(config))
    monkeypatch.setenv("PYHV_RUNTIME_DIR", str(runtime))
    return {"config": config, "runtime": runtime}


@pytest.fixture(scope="session")
def loop_kernel(guest_path) -> Path:
    """tests/guests/loop.S, a guest that never ends by itself (needs binutils)."""
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) not installed: cannot build the loop guest")
    return guest_path("loop")


def run_virsh(args: List[str], env_dirs: dict, stdin: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m pyhv.virt.virsh ARGS` in a subprocess against the temporary store."""
    env = dict(os.environ, PYHV_CONFIG_DIR=str(env_dirs["config"]), PYHV_RUNTIME_DIR=str(env_dirs["runtime"]))
    return subprocess.run([sys.executable, "-m", "pyhv.virt.virsh"] + args, input=stdin, capture_output=True,
                          env=env, timeout=timeout)


def domain_xml(name: str, kernel: Path, dom_type: str = "kvm", extra: str = "") -> str:
    return (f"<domain type='{dom_type}'>\n  <name>{name}</name>\n  <memory unit='MiB'>32</memory>\n"
            f"  <os>\n    <type>hvm</type>\n    <kernel>{kernel}</kernel>\n  </os>\n"
            f"  <devices>\n    <serial type='pty'/>\n    <console type='pty'/>\n{extra}  </devices>\n</domain>\n")


@pytest.fixture
def virsh(store_env):
    """Runs `pyhv virsh ARGS` as a subprocess against the temporary store; a test that fails
    with domains still running gets them destroyed, so no VM process outlives it."""
    yield lambda args, **kw: run_virsh(args, store_env, **kw)
    listing = run_virsh(["list", "--name"], store_env)
    for name in listing.stdout.decode().split():
        run_virsh(["destroy", name], store_env)


@pytest.fixture
def make_domain():
    return domain_xml

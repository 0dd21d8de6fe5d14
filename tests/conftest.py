"""Fixtures shared by every test directory."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Callable, List, TypeVar

import pytest

T = TypeVar("T")
CLONE_NEWNET = 0x40000000

GUESTS_DIR = Path(__file__).resolve().parent / "guests"


def load_guest_builder():
    """tests/guests/build.py, which assembles the test guests (it is also a script)."""
    spec = importlib.util.spec_from_file_location("pyhv_test_guest_build", GUESTS_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def guest_path() -> Callable[[str], Path]:
    """``guest_path(name)`` → the built multiboot ELF of tests/guests/NAME.S (cached)."""
    builder = load_guest_builder()
    return lambda name: Path(builder.build_guest(name))


@pytest.fixture(scope="session", autouse=True)
def _tcg_hints_in_a_scratch_directory(tmp_path_factory):
    """The software CPU's hot-block hints (pyhv.accel.tcg.hints) go to a directory of this test
    session, not the user's cache: tests neither leave files there nor start warm from them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYHV_TCG_HINTS", str(tmp_path_factory.mktemp("tcg-hints")))
        yield


class NetworkNamespace:
    """A network namespace made for one test (``ip netns add``); deleting it takes every
    interface in it along."""

    def __init__(self, name: str) -> None:
        self.name = name

    def ip(self, *args: str) -> str:
        """``ip ARGS`` inside the namespace; its output."""
        done = subprocess.run(["ip", "netns", "exec", self.name, "ip", *args], capture_output=True, text=True)
        assert done.returncode == 0, f"ip {' '.join(args)} in {self.name}: {done.stderr}"
        return done.stdout

    def run(self, action: Callable[[], T]) -> T:
        """``action()`` on a thread that entered the namespace (setns acts on the calling thread
        only). The sockets and TAP descriptors it opens stay in the namespace whichever thread
        uses them afterwards; the test process itself never leaves its own."""
        outcome: List[object] = []

        def enter_and_act() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        code = ctypes.get_errno()
                        raise OSError(code, f"setns into {self.name}: {os.strerror(code)}")
                finally:
                    os.close(fd)
                outcome.append(action())
            except BaseException as err:  # re-raised on the test's thread
                outcome.append(err)

        thread = threading.Thread(target=enter_and_act, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]  # type: ignore[return-value]


def _why_no_namespaces():
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest.fixture
def namespace():
    """A fresh network namespace (skips where one cannot be made), deleted after the test."""
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(reason)
    name = f"pyhv-ns-test-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        yield NetworkNamespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)

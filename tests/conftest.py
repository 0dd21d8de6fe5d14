"""Fixtures shared by every test directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import pytest

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

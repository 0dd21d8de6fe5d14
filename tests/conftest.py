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

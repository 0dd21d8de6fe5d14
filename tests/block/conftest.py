"""Fixtures for the block tests; plain helpers live in qemu_tools.py, which test modules
import by name (``from conftest import`` would get whichever conftest pytest loaded last)."""

import pytest


@pytest.fixture
def tmp(tmp_path):
    return str(tmp_path)

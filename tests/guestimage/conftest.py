"""Fixtures for the default-guest tests: the real Debian packages, fetched once into the cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pyhv.errors import PyhvError
from pyhv.guestimage.debian import KernelFiles, fetch_busybox, fetch_kernel


@pytest.fixture(scope="session")
def debian_packages() -> "tuple[KernelFiles, Path]":
    """(kernel entry, busybox binary) from the user's pyhv cache, fetched with apt if absent."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("apt-get/dpkg not found: the default guest is built from Debian packages")
    try:
        kernel = KernelFiles.load(fetch_kernel())
        busybox = fetch_busybox()
    except PyhvError as err:
        pytest.skip(f"Debian packages unavailable: {err}")
    return kernel, busybox

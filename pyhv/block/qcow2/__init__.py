"""The qcow2 format: header, refcounts, L2 cache, image backend, create, check."""

from __future__ import annotations

from .create import create_qcow2
from .image import Qcow2Image

__all__ = ["Qcow2Image", "create_qcow2"]

"""The software x86-64 CPU (pyhv's TCG): runs a guest without /dev/kvm."""

from __future__ import annotations

from .cpu import Cpu, RunResult, StopReason

__all__ = ["Cpu", "RunResult", "StopReason"]

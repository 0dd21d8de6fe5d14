"""Kernel loaders for direct boot: bzImage, ELF64 vmlinux and multiboot v1.

:func:`load_kernel` writes the kernel, initrd, command line and boot structures into
guest memory and returns the accelerator-neutral :class:`~pyhv.cpu_state.CpuBootState`.
"""

from __future__ import annotations

from .loader import load_kernel

__all__ = ["load_kernel"]

"""pyhv's default guest: Debian's cloud kernel and a busybox initramfs, built on this host.

``build_default_guest()`` gives the kernel, initrd and command line that ``pyhv run`` boots
when the user names no kernel; ``main()`` is the ``pyhv guest`` subcommand.
"""

from __future__ import annotations

from pyhv.guestimage.cli import main
from pyhv.guestimage.debian import fetch_busybox, fetch_kernel
from pyhv.guestimage.default import DEFAULT_CMDLINE, DefaultGuest, build_default_guest

__all__ = ["DEFAULT_CMDLINE", "DefaultGuest", "build_default_guest", "fetch_busybox", "fetch_kernel", "main"]

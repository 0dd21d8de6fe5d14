"""One root error for pyhv, and one family per layer.

Every error a user can meet carries what they need to fix it (the file, the option, the
offset). The CLI prints ``str(err)`` on one line and exits non-zero; only bugs give tracebacks.
Guest faults (things the guest did wrong) are not host errors: they are reported to the guest
or end the VM, and never derive from these classes unless the VM must stop.
"""

from __future__ import annotations


class PyhvError(Exception):
    """Root of every error pyhv raises on purpose."""


class ConfigError(PyhvError):
    """Bad user input: a command-line option, a config file, a missing file."""


class GuestMemoryError(PyhvError):
    """Guest memory set-up or access failed."""


class GuestAddressError(GuestMemoryError):
    """A guest physical address range is not backed by guest RAM."""

    def __init__(self, gpa: int, size: int) -> None:
        super().__init__(f"guest address range {gpa:#x}+{size:#x} is outside guest RAM")
        self.gpa = gpa
        self.size = size


class BusError(PyhvError):
    """A device could not be placed on a bus (overlap, bad range)."""


class KvmError(PyhvError):
    """An ioctl on /dev/kvm failed, or KVM is unusable on this host."""


class BootError(PyhvError):
    """A kernel, initrd or boot image could not be loaded."""


class AccelError(PyhvError):
    """The accelerator cannot run this guest (unavailable, unsupported configuration)."""


class VmFatalError(PyhvError):
    """The VM stopped on an unrecoverable condition (emulation failure, bad exit)."""

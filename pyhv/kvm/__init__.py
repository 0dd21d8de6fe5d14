"""Typed bindings for /dev/kvm: ioctls, structures and exits. No policy lives here."""

from .system import Kvm, kvm_available  # noqa: F401

"""The ACPI builder's errors: a configuration the tables cannot describe is a user error."""

from __future__ import annotations

from ..errors import ConfigError


class AcpiError(ConfigError):
    """ACPI tables cannot be built from this configuration (too many CPUs, a bad name, no room)."""

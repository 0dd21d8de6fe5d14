"""ACPI tables for pyhv's PC machine: an AML encoder (:mod:`.aml`, :mod:`.resources`), the
fixed tables (:mod:`.tables`), the DSDT (:mod:`.dsdt`) and :func:`build_acpi`, which lays
them out in guest RAM for both accelerators."""

from __future__ import annotations

from .builder import (ACPI_RESERVED_RANGES, AcpiConfig, build_acpi, set_boot_params_rsdp)
from .errors import AcpiError

__all__ = ["ACPI_RESERVED_RANGES", "AcpiConfig", "AcpiError", "build_acpi", "set_boot_params_rsdp"]

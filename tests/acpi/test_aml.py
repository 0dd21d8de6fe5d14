"""The AML encoder on its own: PkgLength, integers, names, EISA ids and bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyhv.acpi import aml
from pyhv.acpi.errors import AcpiError
from pyhv.errors import ConfigError


def decode_pkg_length(data: bytes):
    """(value, bytes used), read the way ACPICA's parser does (ACPI 6.4 section 20.2.4)."""
    lead = data[0]
    extra = lead >> 6
    if extra == 0:
        return lead & 0x3F, 1
    value = lead & 0x0F
    for index in range(extra):
        value |= data[1 + index] << (4 + 8 * index)
    return value, 1 + extra


@pytest.mark.parametrize("body,encoded", [
    (0, b"\x01"),
    (0x3E, b"\x3f"),  # 0x3F total: the largest one-byte length
    (0x3F, b"\x41\x04"),  # 0x41 total needs two bytes: lead 0x40 | 1, then 0x04
    (0xFFD, b"\x4f\xff"),  # 0xFFF total: the largest two-byte length
    (0xFFE, b"\x81\x00\x01"),
    (0xFFFFC, b"\x8f\xff\xff"),
    (0xFFFFD, b"\xc1\x00\x00\x01"),
])
def test_pkg_length_boundaries(body: int, encoded: bytes) -> None:
    assert aml.pkg_length(body) == encoded


@given(st.integers(min_value=0, max_value=(1 << 28) - 5))
def test_pkg_length_counts_its_own_bytes(body: int) -> None:
    encoded = aml.pkg_length(body)
    value, used = decode_pkg_length(encoded)
    assert used == len(encoded)
    assert value == body + len(encoded)
    # The shortest form: one byte fewer could not have held the value.
    if len(encoded) > 1:
        limit = 0x40 if len(encoded) == 2 else 1 << (4 + 8 * (len(encoded) - 2))
        assert body + len(encoded) - 1 >= limit


@given(st.integers(min_value=0, max_value=(1 << 28) - 1))
def test_field_length_is_the_plain_bit_count(bits: int) -> None:
    encoded = aml.field_length(bits)
    assert decode_pkg_length(encoded) == (bits, len(encoded))


def test_pkg_length_too_large_is_refused() -> None:
    with pytest.raises(aml.AmlError, match="PkgLength limit"):
        aml.pkg_length(1 << 28)


@pytest.mark.parametrize("value,encoded", [
    (0, b"\x00"),
    (1, b"\x01"),
    (2, b"\x0a\x02"),
    (0xFF, b"\x0a\xff"),
    (0x100, b"\x0b\x00\x01"),
    (0xFFFF, b"\x0b\xff\xff"),
    (0x10000, b"\x0c\x00\x00\x01\x00"),
    (0xFFFF_FFFF, b"\x0c\xff\xff\xff\xff"),
    (0x1_0000_0000, b"\x0e\x00\x00\x00\x00\x01\x00\x00\x00"),
    ((1 << 64) - 1, b"\x0e" + b"\xff" * 8),
])
def test_integer_takes_the_shortest_encoding(value: int, encoded: bytes) -> None:
    assert aml.integer(value) == encoded


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_integer_out_of_range(value: int) -> None:
    with pytest.raises(aml.AmlError, match="outside 0..2"):
        aml.integer(value)


@pytest.mark.parametrize("path,encoded", [
    ("_HID", b"_HID"),
    ("RTC", b"RTC_"),
    ("\\_SB", b"\\_SB_"),
    ("\\_SB.PCI0", b"\\\x2e_SB_PCI0"),
    ("\\_SB.PCI0.ISA", b"\\\x2f\x03_SB_PCI0ISA_"),
    ("^^FOO", b"^^FOO_"),
    ("\\", b"\\\x00"),
])
def test_name_strings(path: str, encoded: bytes) -> None:
    assert aml.name_string(path) == encoded


@pytest.mark.parametrize("path", ["", "abcd", "1ABC", "TOOLONG", "\\_SB..X", "A-B", "\\^X"])
def test_bad_names_are_refused_with_the_name(path: str) -> None:
    with pytest.raises(aml.AmlError) as info:
        aml.name_string(path)
    assert "name" in str(info.value)


@pytest.mark.parametrize("pnp_id,value", [
    # Values as ACPI tables on real machines carry them (and as iasl's EISAID() computes).
    ("PNP0A03", 0x030AD041),
    ("PNP0501", 0x0105D041),
    ("PNP0B00", 0x000BD041),
    ("PNP0303", 0x0303D041),
])
def test_eisaid(pnp_id: str, value: int) -> None:
    assert aml.eisaid_value(pnp_id) == value
    assert aml.eisaid(pnp_id) == b"\x0c" + value.to_bytes(4, "little")


@pytest.mark.parametrize("pnp_id", ["PNP0A0", "pnp0a03", "PNP0A0G", "P1P0A03", "PNP0a03"])
def test_bad_eisaid(pnp_id: str) -> None:
    with pytest.raises(aml.AmlError, match=repr(pnp_id)):
        aml.eisaid(pnp_id)


def test_string_and_bad_strings() -> None:
    assert aml.string("LNRO0005") == b"\x0dLNRO0005\x00"
    with pytest.raises(aml.AmlError, match="NUL"):
        aml.string("a\0b")
    with pytest.raises(aml.AmlError, match="not ASCII"):
        aml.string("caf\u00e9")


def test_package_and_buffer_layout() -> None:
    assert aml.package([aml.integer(5), aml.integer(0)]) == b"\x12\x05\x02\x0a\x05\x00"
    assert aml.buffer(b"\x01\x02") == b"\x11\x05\x0a\x02\x01\x02"
    assert aml.buffer(b"") == b"\x11\x02\x00"
    with pytest.raises(aml.AmlError, match="256 elements"):
        aml.package([aml.integer(0)] * 256)


def test_method_flags_and_limits() -> None:
    encoded = aml.method("_STA", 0, [aml.return_(aml.integer(0x0F))])
    assert encoded == b"\x14\x09_STA\x00\xa4\x0a\x0f"
    assert aml.method("FOO", 2, [], serialized=True, sync_level=3)[6] == 0x3A
    with pytest.raises(aml.AmlError, match="8 arguments"):
        aml.method("FOO", 8, [])
    with pytest.raises(aml.AmlError, match="sync level 16"):
        aml.method("FOO", 0, [], sync_level=16)
    with pytest.raises(aml.AmlError, match="Local8"):
        aml.local(8)
    with pytest.raises(aml.AmlError, match="Arg7"):
        aml.arg(7)


def test_field_refuses_empty_units_and_bad_access() -> None:
    with pytest.raises(aml.AmlError, match="'PM1S' has 0 bits"):
        aml.field("PMIO", [("PM1S", 0)])
    with pytest.raises(aml.AmlError, match="access type 9"):
        aml.field("PMIO", [("PM1S", 16)], access=9)


def test_acpi_errors_are_config_errors() -> None:
    assert issubclass(aml.AmlError, AcpiError)
    assert issubclass(AcpiError, ConfigError)

"""A small encoder for ACPI Machine Language (ACPI 6.4, chapter 20): the terms a VMM's DSDT needs.

Every function returns the encoded bytes of one AML term, so a table is built by nesting
calls, the way ASL nests blocks::

    device("COM1", [name("_HID", eisaid("PNP0501")), name("_UID", integer(1))])

Names are given as ASL writes them (``"\\_SB.PCI0"``, ``"^FOO"``, ``"_HID"``); segments
shorter than four characters are padded with ``_``, as ``iasl`` does. Integers take the
shortest encoding (ZeroOp, OneOp, then byte, word, dword or qword constant), which is what
``iasl`` emits with its default integer optimisation.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

from .errors import AcpiError


class AmlError(AcpiError):
    """A value cannot be encoded in AML (bad name, integer out of range, oversized package)."""


# Data objects (ACPI 6.4 section 20.2.3).
ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E

# Name space modifiers and named objects (sections 20.2.2, 20.2.5).
ALIAS_OP = 0x06
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
ROOT_CHAR = 0x5C
PARENT_PREFIX = 0x5E
NULL_NAME = 0x00
EXT_OP_PREFIX = 0x5B
EXT_MUTEX_OP = 0x01
EXT_OP_REGION_OP = 0x80
EXT_FIELD_OP = 0x81
EXT_DEVICE_OP = 0x82

# Statements and expressions (sections 20.2.5.3, 20.2.5.4).
LOCAL0_OP = 0x60
ARG0_OP = 0x68
STORE_OP = 0x70
AND_OP = 0x7B
OR_OP = 0x7D
NOTIFY_OP = 0x86
LNOT_OP = 0x92
LEQUAL_OP = 0x93
IF_OP = 0xA0
ELSE_OP = 0xA1
RETURN_OP = 0xA4

MAX_PKG_LENGTH = 1 << 28  # four bytes: 4 bits in the lead byte, 8 in each of three more
MAX_INTEGER = (1 << 64) - 1
MAX_PACKAGE_ELEMENTS = 255  # PackageOp's NumElements is one byte

# OperationRegion spaces (section 19.6.100).
SYSTEM_MEMORY = 0x00
SYSTEM_IO = 0x01
PCI_CONFIG = 0x02

# Field flags (section 19.6.48): access type in bits 0-3, lock in bit 4, update rule in bits 5-6.
ACCESS_ANY = 0
ACCESS_BYTE = 1
ACCESS_WORD = 2
ACCESS_DWORD = 3
ACCESS_QWORD = 4
ACCESS_BUFFER = 5
LOCK = 1 << 4
UPDATE_PRESERVE = 0 << 5
UPDATE_WRITE_AS_ONES = 1 << 5
UPDATE_WRITE_AS_ZEROS = 2 << 5

NOTIFY_BUS_CHECK = 0x00
NOTIFY_DEVICE_CHECK = 0x01
NOTIFY_EJECT_REQUEST = 0x03
NOTIFY_POWER_BUTTON = 0x80  # Notify(\_SB.PWRB, 0x80): "power button pressed"

_LEAD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _LEAD_CHARS | frozenset("0123456789")


# --- encodings shared by every term ---------------------------------------------------------------
def _length_bytes(value: int, extra: int) -> bytes:
    """``value`` in the PkgLength layout with ``extra`` bytes after the lead byte."""
    if extra == 0:
        return bytes([value])
    return bytes([(extra << 6) | (value & 0x0F)]) + (value >> 4).to_bytes(extra, "little")


def pkg_length(body_length: int) -> bytes:
    """PkgLength for a body of ``body_length`` bytes; the encoded length counts its own bytes."""
    if body_length < 0:
        raise AmlError(f"AML package body length must not be negative, got {body_length}")
    for extra in range(4):
        total = body_length + 1 + extra
        if total < (0x40 if extra == 0 else 1 << (4 + 8 * extra)):
            return _length_bytes(total, extra)
    raise AmlError(f"AML package of {body_length} bytes exceeds the PkgLength limit of {MAX_PKG_LENGTH - 5}")


def field_length(bits: int) -> bytes:
    """A field unit's width in bits, in the PkgLength layout but counting only the bits."""
    for extra in range(4):
        if bits < (0x40 if extra == 0 else 1 << (4 + 8 * extra)):
            return _length_bytes(bits, extra)
    raise AmlError(f"AML field unit of {bits} bits exceeds the limit of {MAX_PKG_LENGTH - 1}")


def with_pkg_length(body: bytes) -> bytes:
    return pkg_length(len(body)) + body


def name_seg(segment: str) -> bytes:
    """One NameSeg: up to four characters from A-Z, 0-9 and ``_``, not starting with a digit."""
    if not 1 <= len(segment) <= 4 or segment[0] not in _LEAD_CHARS or not set(segment) <= _NAME_CHARS:
        raise AmlError(
            f"AML name segment {segment!r} is invalid: 1-4 characters of A-Z, 0-9 and _, not starting with a digit"
        )
    return segment.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """A NameString: optional ``\\`` or ``^`` prefixes, then dot-separated segments."""
    prefix = bytearray()
    rest = path
    if rest.startswith("\\"):
        prefix.append(ROOT_CHAR)
        rest = rest[1:]
    else:
        while rest.startswith("^"):
            prefix.append(PARENT_PREFIX)
            rest = rest[1:]
    if not rest:
        if not prefix:
            raise AmlError("AML name string is empty")
        return bytes(prefix) + bytes([NULL_NAME])
    segments = [name_seg(seg) for seg in rest.split(".")]
    if len(segments) == 1:
        return bytes(prefix) + segments[0]
    if len(segments) == 2:
        return bytes(prefix) + bytes([DUAL_NAME_PREFIX]) + b"".join(segments)
    if len(segments) > 255:
        raise AmlError(f"AML name string {path!r} has {len(segments)} segments, at most 255 fit")
    return bytes(prefix) + bytes([MULTI_NAME_PREFIX, len(segments)]) + b"".join(segments)


def _terms(body: Iterable[bytes]) -> bytes:
    return b"".join(body)


# --- data objects ---------------------------------------------------------------------------------
def integer(value: int) -> bytes:
    """The shortest encoding of an unsigned integer of at most 64 bits."""
    if not 0 <= value <= MAX_INTEGER:
        raise AmlError(f"AML integer {value} is outside 0..2^64-1")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value <= 0xFF:
        return bytes([BYTE_PREFIX, value])
    if value <= 0xFFFF:
        return bytes([WORD_PREFIX]) + value.to_bytes(2, "little")
    if value <= 0xFFFF_FFFF:
        return bytes([DWORD_PREFIX]) + value.to_bytes(4, "little")
    return bytes([QWORD_PREFIX]) + value.to_bytes(8, "little")


def ones() -> bytes:
    """OnesOp: all bits set in the table's integer width (ASL ``Ones``)."""
    return bytes([ONES_OP])


def string(text: str) -> bytes:
    """A NUL-terminated ASCII string constant."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError as err:
        raise AmlError(f"AML string {text!r} is not ASCII (position {err.start})") from err
    if b"\0" in data:
        raise AmlError(f"AML string {text!r} contains a NUL character")
    return bytes([STRING_PREFIX]) + data + b"\0"


def buffer(data: bytes) -> bytes:
    """Buffer(n) { bytes }: the size is an integer term before the bytes."""
    return bytes([BUFFER_OP]) + with_pkg_length(integer(len(data)) + bytes(data))


def package(elements: Sequence[bytes]) -> bytes:
    """Package(n) { ... } of already-encoded data objects or name references."""
    if len(elements) > MAX_PACKAGE_ELEMENTS:
        raise AmlError(f"AML package has {len(elements)} elements, PackageOp holds at most {MAX_PACKAGE_ELEMENTS}")
    return bytes([PACKAGE_OP]) + with_pkg_length(bytes([len(elements)]) + _terms(elements))


def eisaid(pnp_id: str) -> bytes:
    """EISAID("PNP0A03"): three letters and four hex digits compressed into a dword."""
    return integer(eisaid_value(pnp_id))


def eisaid_value(pnp_id: str) -> int:
    letters, digits = pnp_id[:3], pnp_id[3:]
    if (len(pnp_id) != 7 or not all("A" <= c <= "Z" for c in letters)
            or not all(c in "0123456789ABCDEF" for c in digits)):
        raise AmlError(f"EISA id {pnp_id!r} must be three capital letters and four upper-case hex digits")
    packed = 0
    for letter in letters:
        packed = (packed << 5) | (ord(letter) - 0x40)
    packed = (packed << 16) | int(digits, 16)
    # The compressed id is stored most significant byte first.
    return int.from_bytes(packed.to_bytes(4, "big"), "little")


# --- named objects and scopes ---------------------------------------------------------------------
def name(path: str, value: bytes) -> bytes:
    """Name(path, value)."""
    return bytes([NAME_OP]) + name_string(path) + value


def scope(path: str, body: Iterable[bytes]) -> bytes:
    """Scope(path) { body }."""
    return bytes([SCOPE_OP]) + with_pkg_length(name_string(path) + _terms(body))


def device(path: str, body: Iterable[bytes]) -> bytes:
    """Device(path) { body }."""
    return bytes([EXT_OP_PREFIX, EXT_DEVICE_OP]) + with_pkg_length(name_string(path) + _terms(body))


def method(path: str, arg_count: int, body: Iterable[bytes], serialized: bool = False,
           sync_level: int = 0) -> bytes:
    """Method(path, arg_count, NotSerialized|Serialized, sync_level) { body }."""
    if not 0 <= arg_count <= 7:
        raise AmlError(f"AML method {path!r}: {arg_count} arguments, at most 7 are allowed")
    if not 0 <= sync_level <= 15:
        raise AmlError(f"AML method {path!r}: sync level {sync_level} is outside 0..15")
    flags = arg_count | (0x08 if serialized else 0) | (sync_level << 4)
    return bytes([METHOD_OP]) + with_pkg_length(name_string(path) + bytes([flags]) + _terms(body))


def mutex(path: str, sync_level: int = 0) -> bytes:
    if not 0 <= sync_level <= 15:
        raise AmlError(f"AML mutex {path!r}: sync level {sync_level} is outside 0..15")
    return bytes([EXT_OP_PREFIX, EXT_MUTEX_OP]) + name_string(path) + bytes([sync_level])


def operation_region(path: str, space: int, offset: int, length: int) -> bytes:
    """OperationRegion(path, space, offset, length), e.g. ``SYSTEM_IO`` ports."""
    if not 0 <= space <= 0xFF:
        raise AmlError(f"AML operation region {path!r}: region space {space} is not a byte")
    return (bytes([EXT_OP_PREFIX, EXT_OP_REGION_OP]) + name_string(path) + bytes([space])
            + integer(offset) + integer(length))


def field(region: str, units: Sequence[Tuple[Optional[str], int]], access: int = ACCESS_BYTE,
          lock: bool = False, update: int = UPDATE_PRESERVE) -> bytes:
    """Field(region, access, Lock|NoLock, update) { NAME, bits, ... }.

    ``units`` lists (name, bit width) pairs; a name of None is a reserved gap
    (ASL's ``Offset()`` or ``, bits``).
    """
    if not 0 <= access <= ACCESS_BUFFER:
        raise AmlError(f"AML field on {region!r}: access type {access} is not one of 0..5")
    flags = access | (LOCK if lock else 0) | update
    encoded = bytearray()
    for unit_name, bits in units:
        if bits <= 0:
            raise AmlError(f"AML field on {region!r}: unit {unit_name!r} has {bits} bits")
        if unit_name is None:
            encoded.append(0x00)  # ReservedField
        else:
            encoded += name_seg(unit_name)
        encoded += field_length(bits)
    return (bytes([EXT_OP_PREFIX, EXT_FIELD_OP])
            + with_pkg_length(name_string(region) + bytes([flags]) + bytes(encoded)))


# --- statements and expressions -------------------------------------------------------------------
def local(index: int) -> bytes:
    if not 0 <= index <= 7:
        raise AmlError(f"AML Local{index} does not exist (Local0..Local7)")
    return bytes([LOCAL0_OP + index])


def arg(index: int) -> bytes:
    if not 0 <= index <= 6:
        raise AmlError(f"AML Arg{index} does not exist (Arg0..Arg6)")
    return bytes([ARG0_OP + index])


def ref(path: str) -> bytes:
    """A reference to a named object, as an operand."""
    return name_string(path)


def return_(value: bytes) -> bytes:
    return bytes([RETURN_OP]) + value


def store(source: bytes, target: bytes) -> bytes:
    return bytes([STORE_OP]) + source + target


def notify(target: bytes, value: bytes) -> bytes:
    return bytes([NOTIFY_OP]) + target + value


def and_(left: bytes, right: bytes, target: bytes = bytes([NULL_NAME])) -> bytes:
    return bytes([AND_OP]) + left + right + target


def or_(left: bytes, right: bytes, target: bytes = bytes([NULL_NAME])) -> bytes:
    return bytes([OR_OP]) + left + right + target


def lequal(left: bytes, right: bytes) -> bytes:
    return bytes([LEQUAL_OP]) + left + right


def lnot(operand: bytes) -> bytes:
    return bytes([LNOT_OP]) + operand


def if_(predicate: bytes, body: Iterable[bytes]) -> bytes:
    return bytes([IF_OP]) + with_pkg_length(predicate + _terms(body))


def else_(body: Iterable[bytes]) -> bytes:
    return bytes([ELSE_OP]) + with_pkg_length(_terms(body))

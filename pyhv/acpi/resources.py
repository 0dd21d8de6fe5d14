"""Resource descriptors for _CRS (ACPI 6.4 section 6.4): what ASL's ResourceTemplate() builds.

Each function returns one descriptor's bytes; :func:`resource_template` joins them, adds the
End Tag and wraps the result in an AML Buffer, as ``iasl`` does for ``ResourceTemplate() {...}``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from .aml import AmlError, buffer

# Small resource tags: (item name << 3) | length.
_SMALL_IRQ = 0x04
_SMALL_IO = 0x08
_SMALL_FIXED_IO = 0x09
_SMALL_END_TAG = 0x0F

# Large resource item names (the tag byte is 0x80 | name).
LARGE_MEMORY32_FIXED = 0x86
LARGE_DWORD_ADDRESS = 0x87
LARGE_WORD_ADDRESS = 0x88
LARGE_EXTENDED_INTERRUPT = 0x89
LARGE_QWORD_ADDRESS = 0x8A

# Address space descriptors: resource type.
ADDRESS_MEMORY = 0
ADDRESS_IO = 1
ADDRESS_BUS_NUMBER = 2

# General flags of an address space descriptor.
_ADDRESS_CONSUMER = 1 << 0
_ADDRESS_SUBTRACTIVE = 1 << 1
_ADDRESS_MIN_FIXED = 1 << 2
_ADDRESS_MAX_FIXED = 1 << 3

# Memory type-specific flags: _RW in bit 0, _MEM in bits 1-2.
MEMORY_NON_CACHEABLE = 0 << 1
MEMORY_CACHEABLE = 1 << 1
MEMORY_WRITE_COMBINING = 2 << 1
MEMORY_PREFETCHABLE = 3 << 1
_MEMORY_READ_WRITE = 1 << 0
# I/O type-specific flags: _RNG in bits 0-1.
IO_RANGE_ENTIRE = 3

# IRQ and Extended Interrupt flags.
_IRQ_EDGE = 1 << 0
_IRQ_ACTIVE_LOW = 1 << 3
_IRQ_SHARED = 1 << 4
_INT_CONSUMER = 1 << 0
_INT_EDGE = 1 << 1
_INT_ACTIVE_LOW = 1 << 2
_INT_SHARED = 1 << 3


def _small(item: int, body: bytes) -> bytes:
    return bytes([(item << 3) | len(body)]) + body


def _large(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + len(body).to_bytes(2, "little") + body


def _check_range(what: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise AmlError(f"{what} {value:#x} does not fit in {bits} bits")


def io(minimum: int, maximum: int, alignment: int, length: int, decode16: bool = True) -> bytes:
    """IO(Decode16|Decode10, min, max, alignment, length)."""
    for what, value, bits in (("IO minimum", minimum, 16), ("IO maximum", maximum, 16),
                              ("IO alignment", alignment, 8), ("IO length", length, 8)):
        _check_range(what, value, bits)
    body = (bytes([1 if decode16 else 0]) + minimum.to_bytes(2, "little") + maximum.to_bytes(2, "little")
            + bytes([alignment, length]))
    return _small(_SMALL_IO, body)


def fixed_io(base: int, length: int) -> bytes:
    """FixedIO(base, length): a 10-bit decoded ISA range."""
    _check_range("FixedIO base", base, 10)
    _check_range("FixedIO length", length, 8)
    return _small(_SMALL_FIXED_IO, base.to_bytes(2, "little") + bytes([length]))


def _irq_mask(irqs: Sequence[int]) -> bytes:
    mask = 0
    for irq in irqs:
        if not 0 <= irq <= 15:
            raise AmlError(f"IRQ descriptor: IRQ {irq} is not an ISA IRQ (0-15)")
        mask |= 1 << irq
    return mask.to_bytes(2, "little")


def irq_no_flags(irqs: Sequence[int]) -> bytes:
    """IRQNoFlags() {irqs}: edge-triggered, active-high, exclusive ISA IRQs."""
    return _small(_SMALL_IRQ, _irq_mask(irqs))


def irq(irqs: Sequence[int], edge: bool = True, active_low: bool = False, shared: bool = False) -> bytes:
    """IRQ(Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared) {irqs}."""
    flags = (_IRQ_EDGE if edge else 0) | (_IRQ_ACTIVE_LOW if active_low else 0) | (_IRQ_SHARED if shared else 0)
    return _small(_SMALL_IRQ, _irq_mask(irqs) + bytes([flags]))


def interrupt(gsis: Sequence[int], edge: bool = False, active_low: bool = False, shared: bool = False,
              consumer: bool = True) -> bytes:
    """Interrupt(ResourceConsumer, Level|Edge, ActiveHigh|ActiveLow, Exclusive|Shared) {gsis}."""
    if not 1 <= len(gsis) <= 255:
        raise AmlError(f"Interrupt descriptor: {len(gsis)} interrupts, 1 to 255 fit")
    flags = ((_INT_CONSUMER if consumer else 0) | (_INT_EDGE if edge else 0)
             | (_INT_ACTIVE_LOW if active_low else 0) | (_INT_SHARED if shared else 0))
    body = bytearray([flags, len(gsis)])
    for gsi in gsis:
        _check_range("Interrupt number", gsi, 32)
        body += gsi.to_bytes(4, "little")
    return _large(LARGE_EXTENDED_INTERRUPT, bytes(body))


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    """Memory32Fixed(ReadWrite|ReadOnly, base, length)."""
    _check_range("Memory32Fixed base", base, 32)
    _check_range("Memory32Fixed length", length, 32)
    body = bytes([1 if writable else 0]) + base.to_bytes(4, "little") + length.to_bytes(4, "little")
    return _large(LARGE_MEMORY32_FIXED, body)


def _address_space(tag: int, width: int, resource_type: int, type_flags: int, minimum: int, maximum: int,
                   length: int, granularity: int, translation: int, producer: bool, subtractive: bool) -> bytes:
    for what, value in (("granularity", granularity), ("minimum", minimum), ("maximum", maximum),
                        ("translation", translation), ("length", length)):
        _check_range(f"address space descriptor {what}", value, width * 8)
    if length and maximum - minimum + 1 != length:
        # With both ends fixed, the spec requires length = max - min + 1 (section 6.4.3.5, Table 6.44).
        raise AmlError(f"address space descriptor: length {length:#x} does not match range "
                       f"{minimum:#x}-{maximum:#x}")
    general = (_ADDRESS_MIN_FIXED | _ADDRESS_MAX_FIXED | (0 if producer else _ADDRESS_CONSUMER)
               | (_ADDRESS_SUBTRACTIVE if subtractive else 0))
    body = bytes([resource_type, general, type_flags]) + b"".join(
        value.to_bytes(width, "little") for value in (granularity, minimum, maximum, translation, length))
    return _large(tag, body)


def word_bus_number(minimum: int, maximum: int, producer: bool = True) -> bytes:
    """WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, count)."""
    return _address_space(LARGE_WORD_ADDRESS, 2, ADDRESS_BUS_NUMBER, 0, minimum, maximum,
                          maximum - minimum + 1, 0, 0, producer, False)


def word_io(minimum: int, maximum: int, producer: bool = True) -> bytes:
    """WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min, max, 0, length)."""
    return _address_space(LARGE_WORD_ADDRESS, 2, ADDRESS_IO, IO_RANGE_ENTIRE, minimum, maximum,
                          maximum - minimum + 1, 0, 0, producer, False)


def dword_memory(minimum: int, maximum: int, cacheability: int = MEMORY_NON_CACHEABLE,
                 writable: bool = True, producer: bool = True) -> bytes:
    """DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, cacheability, ReadWrite, 0, min, max, 0, len)."""
    flags = cacheability | (_MEMORY_READ_WRITE if writable else 0)
    return _address_space(LARGE_DWORD_ADDRESS, 4, ADDRESS_MEMORY, flags, minimum, maximum,
                          maximum - minimum + 1, 0, 0, producer, False)


def qword_memory(minimum: int, maximum: int, cacheability: int = MEMORY_NON_CACHEABLE,
                 writable: bool = True, producer: bool = True) -> bytes:
    """QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, cacheability, ReadWrite, 0, min, max, 0, len)."""
    flags = cacheability | (_MEMORY_READ_WRITE if writable else 0)
    return _address_space(LARGE_QWORD_ADDRESS, 8, ADDRESS_MEMORY, flags, minimum, maximum,
                          maximum - minimum + 1, 0, 0, producer, False)


def end_tag() -> bytes:
    # A checksum of zero means "the descriptors are not checksummed", as iasl writes it.
    return _small(_SMALL_END_TAG, b"\x00")


def resource_template(descriptors: Iterable[bytes]) -> bytes:
    """ResourceTemplate() { descriptors }: a Buffer holding them and an End Tag."""
    return buffer(b"".join(descriptors) + end_tag())

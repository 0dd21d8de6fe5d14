"""The AML encoder against iasl: the same ASL gives the same bytes."""

from __future__ import annotations

from typing import Callable

import pytest

from pyhv.acpi import aml
from pyhv.acpi import resources as res
from pyhv.acpi.dsdt import build_dsdt, pc_legacy_devices, pci_host_bridge, virtio_mmio

CASES = {
    "integers": (
        "Name (I0, 0)\nName (I1, 1)\nName (I2, 0x2A)\nName (I3, 0x1234)\nName (I4, 0x12345678)\n"
        "Name (I5, 0x123456789A)\nName (I6, 0xFF)\nName (I7, 0x100)\nName (I8, Ones)",
        lambda: b"".join([aml.name("I0", aml.integer(0)), aml.name("I1", aml.integer(1)),
                          aml.name("I2", aml.integer(0x2A)), aml.name("I3", aml.integer(0x1234)),
                          aml.name("I4", aml.integer(0x12345678)), aml.name("I5", aml.integer(0x123456789A)),
                          aml.name("I6", aml.integer(0xFF)), aml.name("I7", aml.integer(0x100)),
                          aml.name("I8", aml.ones())]),
    ),
    "strings, buffers, packages": (
        'Name (STR, "LNRO0005")\nName (BUF, Buffer () {1, 2, 3})\n'
        'Name (PKG, Package () {5, "x", Package () {0, 0xFFFF}})',
        lambda: (aml.name("STR", aml.string("LNRO0005")) + aml.name("BUF", aml.buffer(b"\x01\x02\x03"))
                 + aml.name("PKG", aml.package([aml.integer(5), aml.string("x"),
                                                aml.package([aml.integer(0), aml.integer(0xFFFF)])]))),
    ),
    "scopes, devices and name paths": (
        "Scope (\\_SB) { Device (PCI0) { Name (_HID, EisaId (\"PNP0A03\")) Name (_UID, 0)\n"
        "  Device (ISA) { Name (_ADR, 0x00010000) } } }\n"
        "Name (\\_SB.PCI0.ISA.ZZZ, 7)\nName (\\_S5, Package (4) {5, 5, 0, 0})",
        lambda: (aml.scope("\\_SB", [aml.device("PCI0", [
            aml.name("_HID", aml.eisaid("PNP0A03")), aml.name("_UID", aml.integer(0)),
            aml.device("ISA", [aml.name("_ADR", aml.integer(0x00010000))])])])
            + aml.name("\\_SB.PCI0.ISA.ZZZ", aml.integer(7))
            + aml.name("\\_S5", aml.package([aml.integer(5), aml.integer(5), aml.integer(0), aml.integer(0)]))),
    ),
    "methods with Return, Store, Notify, If": (
        "Scope (\\_SB) { Device (PWRB) { Name (_HID, EisaId (\"PNP0C0C\")) }\n"
        "  Name (FLAG, 0)\n"
        "  Method (_STA, 0, NotSerialized) { Return (0x0F) }\n"
        "  Method (SETF, 1, Serialized) { Store (Arg0, FLAG) Store (FLAG, Local0)\n"
        "    If (LEqual (Local0, One)) { Notify (\\_SB.PWRB, 0x80) } Return (Local0) } }",
        lambda: aml.scope("\\_SB", [
            aml.device("PWRB", [aml.name("_HID", aml.eisaid("PNP0C0C"))]),
            aml.name("FLAG", aml.integer(0)),
            aml.method("_STA", 0, [aml.return_(aml.integer(0x0F))]),
            aml.method("SETF", 1, [
                aml.store(aml.arg(0), aml.ref("FLAG")), aml.store(aml.ref("FLAG"), aml.local(0)),
                aml.if_(aml.lequal(aml.local(0), aml.integer(1)),
                        [aml.notify(aml.ref("\\_SB.PWRB"), aml.integer(aml.NOTIFY_POWER_BUTTON))]),
                aml.return_(aml.local(0))], serialized=True)]),
    ),
    "operation region and fields": (
        "OperationRegion (PMIO, SystemIO, 0x0600, 0x0C)\n"
        "Field (PMIO, WordAcc, NoLock, Preserve) { PM1S, 16, PM1E, 16, PM1C, 16, , 16, TMR, 32 }\n"
        "OperationRegion (BIG, SystemMemory, 0xFED00000, 0x400)\n"
        "Field (BIG, DWordAcc, Lock, WriteAsZeros) { Offset (0x100), WIDE, 160 }",
        lambda: (aml.operation_region("PMIO", aml.SYSTEM_IO, 0x600, 0x0C)
                 + aml.field("PMIO", [("PM1S", 16), ("PM1E", 16), ("PM1C", 16), (None, 16), ("TMR", 32)],
                             access=aml.ACCESS_WORD)
                 + aml.operation_region("BIG", aml.SYSTEM_MEMORY, 0xFED00000, 0x400)
                 + aml.field("BIG", [(None, 0x800), ("WIDE", 160)], access=aml.ACCESS_DWORD, lock=True,
                             update=aml.UPDATE_WRITE_AS_ZEROS)),
    ),
    "resource templates": (
        "Name (RES, ResourceTemplate () {\n"
        "  IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)\n"
        "  IO (Decode10, 0x0060, 0x0060, 0x01, 0x01)\n"
        "  FixedIO (0x0061, 0x01)\n"
        "  IRQNoFlags () {4}\n"
        "  IRQ (Edge, ActiveHigh, Exclusive) {3, 4}\n"
        "  IRQ (Level, ActiveLow, Shared) {9}\n"
        "  Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) {5}\n"
        "  Interrupt (ResourceConsumer, Edge, ActiveLow, Shared) {33, 34}\n"
        "  Memory32Fixed (ReadWrite, 0xD0000000, 0x00000200)\n"
        "  Memory32Fixed (ReadOnly, 0xFEC00000, 0x00001000)\n"
        "  WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0xFF, 0, 0x100)\n"
        "  WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0x0D00, 0xFFFF, 0, 0xF300)\n"
        "  DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,\n"
        "    0, 0xC0000000, 0xFEBFFFFF, 0, 0x3EC00000)\n"
        "  QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite,\n"
        "    0, 0x100000000, 0x1FFFFFFFF, 0, 0x100000000)\n"
        "  QWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadOnly,\n"
        "    0, 0x200000000, 0x200000FFF, 0, 0x1000)\n"
        "})",
        lambda: aml.name("RES", res.resource_template([
            res.io(0x3F8, 0x3F8, 0, 8), res.io(0x60, 0x60, 1, 1, decode16=False), res.fixed_io(0x61, 1),
            res.irq_no_flags([4]), res.irq([3, 4]), res.irq([9], edge=False, active_low=True, shared=True),
            res.interrupt([5]), res.interrupt([33, 34], edge=True, active_low=True, shared=True),
            res.memory32_fixed(0xD0000000, 0x200), res.memory32_fixed(0xFEC00000, 0x1000, writable=False),
            res.word_bus_number(0, 0xFF), res.word_io(0xD00, 0xFFFF),
            res.dword_memory(0xC0000000, 0xFEBFFFFF),
            res.qword_memory(0x100000000, 0x1FFFFFFFF, res.MEMORY_PREFETCHABLE),
            res.qword_memory(0x200000000, 0x200000FFF, res.MEMORY_CACHEABLE, writable=False, producer=False),
        ])),
    ),
    "long packages use multi-byte PkgLength": (
        "Name (LONG, Package () {" + ", ".join(str(0x1000 + i) for i in range(40)) + "})\n"
        "Name (HUGE, Buffer () {" + ", ".join(str(i & 0xFF) for i in range(0x1100)) + "})",
        lambda: (aml.name("LONG", aml.package([aml.integer(0x1000 + i) for i in range(40)]))
                 + aml.name("HUGE", aml.buffer(bytes(i & 0xFF for i in range(0x1100))))),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_encoder_matches_iasl(case: str, compile_asl: Callable[[str], bytes]) -> None:
    asl, encode = CASES[case]
    expected = compile_asl(asl)
    assert encode().hex() == expected.hex()


def test_pc_dsdt_disassembles_cleanly(disassemble) -> None:
    devices = pc_legacy_devices([(0x3F8, 4), (0x2F8, 3)]) + [virtio_mmio(i, 0xD0000000 + 0x200 * i, 0x200, 5 + i)
                                                              for i in range(3)]
    listing = disassemble("dsdt", build_dsdt(2, devices))
    for text in ("Device (C001)", '"ACPI0007"', 'EisaId ("PNP0501")', "0x02F8", 'EisaId ("PNP0303")',
                 'EisaId ("PNP0F13")', 'EisaId ("PNP0B00")', "Device (VR02)", '"LNRO0005"', "0xD0000400",
                 "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )", "Name (\\_S5, Package (0x04)"):
        assert text in listing


def test_pci_host_bridge_windows(disassemble) -> None:
    bridge = pci_host_bridge(high_mmio=(0x1_0000_0000 + (1 << 30), 0x1_0000_0000 + (2 << 30)))
    listing = disassemble("dsdt", build_dsdt(1, [bridge]))
    for text in ('Device (PCI0)', 'EisaId ("PNP0A03")', "WordBusNumber (ResourceProducer", "0x0CF8",
                 "0x0CF7", "0x0D00", "0xC0000000", "0xFEBFFFFF", "0x0000000140000000", "0x000000017FFFFFFF"):
        assert text in listing, text

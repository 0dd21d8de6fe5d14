"""The DSDT's pvpanic device against iasl: the bytes QEMU's ASL gives, and a clean listing."""

from __future__ import annotations

from typing import Callable

from pyhv.acpi.dsdt import build_dsdt, pvpanic


def test_pvpanic_device_matches_iasl(compile_asl: Callable[[str], bytes]) -> None:
    asl = ('Device (PEVT)\n{\n    Name (_HID, "QEMU0001")\n'
           '    Name (_CRS, ResourceTemplate () { IO (Decode16, 0x0505, 0x0505, 0x01, 0x01, ) })\n}')
    assert pvpanic(0x505).hex() == compile_asl(asl).hex()


def test_dsdt_with_pvpanic_disassembles_cleanly(disassemble) -> None:
    listing = disassemble("dsdt", build_dsdt(1, [pvpanic(0x506)]))
    for text in ("Device (PEVT)", '"QEMU0001"', "IO (Decode16", "0x0506"):
        assert text in listing, text

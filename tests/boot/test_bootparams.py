"""boot_params / setup_header field offsets against Documentation/arch/x86/boot.rst."""

from __future__ import annotations

import ctypes

import pytest

from pyhv.boot.bootparams import BootParams, SetupHeader

HEADER_OFFSETS = {  # boot.rst "THE REAL-MODE KERNEL HEADER" table
    "setup_sects": 0x1F1, "syssize": 0x1F4, "vid_mode": 0x1FA, "boot_flag": 0x1FE, "header": 0x202,
    "version": 0x206, "type_of_loader": 0x210, "loadflags": 0x211, "code32_start": 0x214,
    "ramdisk_image": 0x218, "ramdisk_size": 0x21C, "heap_end_ptr": 0x224, "cmd_line_ptr": 0x228,
    "initrd_addr_max": 0x22C, "kernel_alignment": 0x230, "relocatable_kernel": 0x234, "xloadflags": 0x236,
    "cmdline_size": 0x238, "payload_offset": 0x248, "payload_length": 0x24C, "setup_data": 0x250,
    "pref_address": 0x258, "init_size": 0x260, "handover_offset": 0x264, "kernel_info_offset": 0x268,
}
ZERO_PAGE_OFFSETS = {  # boot.rst "THE ZERO PAGE" / zero-page.rst
    "acpi_rsdp_addr": 0x070, "ext_ramdisk_image": 0x0C0, "ext_ramdisk_size": 0x0C4, "ext_cmd_line_ptr": 0x0C8,
    "e820_entries": 0x1E8, "sentinel": 0x1EF, "hdr": 0x1F1, "e820_table": 0x2D0,
}


@pytest.mark.parametrize("name, offset", sorted(HEADER_OFFSETS.items()))
def test_setup_header_offsets(name: str, offset: int) -> None:
    assert 0x1F1 + getattr(SetupHeader, name).offset == offset


@pytest.mark.parametrize("name, offset", sorted(ZERO_PAGE_OFFSETS.items()))
def test_zero_page_offsets(name: str, offset: int) -> None:
    assert getattr(BootParams, name).offset == offset


def test_sizes() -> None:
    assert ctypes.sizeof(BootParams) == 4096
    assert 0x1F1 + ctypes.sizeof(SetupHeader) == 0x26C

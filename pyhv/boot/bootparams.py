"""The Linux x86 ``setup_header`` and ``boot_params`` (the zero page), as ctypes structures.

Field offsets follow Documentation/arch/x86/boot.rst and ``asm/bootparam.h``; the tests
check them against the documented numbers, so code names fields instead of offsets.
"""

from __future__ import annotations

import ctypes

SETUP_HEADER_OFFSET = 0x1F1  # in both the bzImage file and boot_params
SETUP_HEADER_MAGIC = 0x53726448  # "HdrS"
BOOT_FLAG = 0xAA55
E820_MAX_ENTRIES_ZEROPAGE = 128

# loadflags
LOADED_HIGH = 1 << 0
KASLR_FLAG = 1 << 1
QUIET_FLAG = 1 << 5
KEEP_SEGMENTS = 1 << 6
CAN_USE_HEAP = 1 << 7

# xloadflags
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1

TYPE_OF_LOADER_UNDEFINED = 0xFF

# setup_data (protocol 2.09+): a linked list of typed blobs, boot_params.hdr.setup_data
# its head. Each entry: u64 next (physical address, 0 ends the list), u32 type, u32 len, data.
SETUP_DATA_PROTOCOL = 0x0209
SETUP_RNG_SEED = 9


class SetupHeader(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("setup_sects", ctypes.c_uint8),  # 0x1f1
        ("root_flags", ctypes.c_uint16),
        ("syssize", ctypes.c_uint32),
        ("ram_size", ctypes.c_uint16),
        ("vid_mode", ctypes.c_uint16),
        ("root_dev", ctypes.c_uint16),
        ("boot_flag", ctypes.c_uint16),  # 0x1fe
        ("jump", ctypes.c_uint16),
        ("header", ctypes.c_uint32),  # 0x202
        ("version", ctypes.c_uint16),
        ("realmode_swtch", ctypes.c_uint32),
        ("start_sys_seg", ctypes.c_uint16),
        ("kernel_version", ctypes.c_uint16),
        ("type_of_loader", ctypes.c_uint8),  # 0x210
        ("loadflags", ctypes.c_uint8),
        ("setup_move_size", ctypes.c_uint16),
        ("code32_start", ctypes.c_uint32),
        ("ramdisk_image", ctypes.c_uint32),  # 0x218
        ("ramdisk_size", ctypes.c_uint32),
        ("bootsect_kludge", ctypes.c_uint32),
        ("heap_end_ptr", ctypes.c_uint16),  # 0x224
        ("ext_loader_ver", ctypes.c_uint8),
        ("ext_loader_type", ctypes.c_uint8),
        ("cmd_line_ptr", ctypes.c_uint32),  # 0x228
        ("initrd_addr_max", ctypes.c_uint32),
        ("kernel_alignment", ctypes.c_uint32),
        ("relocatable_kernel", ctypes.c_uint8),
        ("min_alignment", ctypes.c_uint8),
        ("xloadflags", ctypes.c_uint16),  # 0x236
        ("cmdline_size", ctypes.c_uint32),
        ("hardware_subarch", ctypes.c_uint32),
        ("hardware_subarch_data", ctypes.c_uint64),
        ("payload_offset", ctypes.c_uint32),  # 0x248
        ("payload_length", ctypes.c_uint32),
        ("setup_data", ctypes.c_uint64),
        ("pref_address", ctypes.c_uint64),  # 0x258
        ("init_size", ctypes.c_uint32),
        ("handover_offset", ctypes.c_uint32),
        ("kernel_info_offset", ctypes.c_uint32),  # 0x268
    ]


class E820Record(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("addr", ctypes.c_uint64), ("size", ctypes.c_uint64), ("type", ctypes.c_uint32)]


class BootParams(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("_screen_info", ctypes.c_uint8 * 0x40),
        ("_apm_bios_info", ctypes.c_uint8 * 0x14),
        ("_pad2", ctypes.c_uint8 * 4),
        ("tboot_addr", ctypes.c_uint64),  # 0x058
        ("_ist_info", ctypes.c_uint8 * 0x10),
        ("acpi_rsdp_addr", ctypes.c_uint64),  # 0x070
        ("_pad3", ctypes.c_uint8 * 8),
        ("_hd_info", ctypes.c_uint8 * 0x20),
        ("_sys_desc_table", ctypes.c_uint8 * 0x10),
        ("_olpc_ofw_header", ctypes.c_uint8 * 0x10),
        ("ext_ramdisk_image", ctypes.c_uint32),  # 0x0c0
        ("ext_ramdisk_size", ctypes.c_uint32),
        ("ext_cmd_line_ptr", ctypes.c_uint32),
        ("_pad4", ctypes.c_uint8 * 112),
        ("cc_blob_address", ctypes.c_uint32),  # 0x13c
        ("_edid_info", ctypes.c_uint8 * 0x80),
        ("_efi_info", ctypes.c_uint8 * 0x20),
        ("alt_mem_k", ctypes.c_uint32),  # 0x1e0
        ("scratch", ctypes.c_uint32),
        ("e820_entries", ctypes.c_uint8),  # 0x1e8
        ("eddbuf_entries", ctypes.c_uint8),
        ("edd_mbr_sig_buf_entries", ctypes.c_uint8),
        ("kbd_status", ctypes.c_uint8),
        ("secure_boot", ctypes.c_uint8),
        ("_pad5", ctypes.c_uint8 * 2),
        ("sentinel", ctypes.c_uint8),  # 0x1ef
        ("_pad6", ctypes.c_uint8),
        ("hdr", SetupHeader),  # 0x1f1
        ("_pad7", ctypes.c_uint8 * (0x290 - SETUP_HEADER_OFFSET - ctypes.sizeof(SetupHeader))),
        ("edd_mbr_sig_buffer", ctypes.c_uint32 * 16),  # 0x290
        ("e820_table", E820Record * E820_MAX_ENTRIES_ZEROPAGE),  # 0x2d0
        ("_pad8", ctypes.c_uint8 * 48),  # 0xcd0
        ("_eddbuf", ctypes.c_uint8 * (6 * 82)),  # 0xd00
        ("_pad9", ctypes.c_uint8 * 276),  # 0xeec
    ]


def field_offset(struct_type: type, name: str) -> int:
    return getattr(struct_type, name).offset

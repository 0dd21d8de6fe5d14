"""``pyhv-exit``: a 91-byte static x86-64 program that ends the VM with a status.

QEMU's ``isa-debug-exit`` device (and pyhv's) makes the VM process exit with
``(value << 1) | 1`` when the guest writes ``value`` to its port (0xf4 by default). The Debian
cloud kernel is built without ``CONFIG_DEVPORT``, so there is no ``/dev/port`` for a shell to
write through; this program asks the kernel for the port with ``ioperm`` and executes ``out``.

``pyhv-exit STATUS`` writes the low byte of the decimal STATUS to port 0xf4. Its own exit
status says what happened: 0 means the write was done but the VM is still running (no device
at that port: the caller should power off instead), 1 means ``ioperm`` was refused.

The program is one PT_LOAD segment holding the ELF header, the program header and the code,
which keeps the file smaller than any linker would make it and removes any build step.
"""

from __future__ import annotations

import struct

DEBUG_EXIT_PORT = 0xF4
LOAD_ADDRESS = 0x400000

# Machine code, assembled from the listing beside each line (Intel syntax).
EXIT_CODE = bytes.fromhex(
    "31db"              # xor ebx, ebx                 ; status = 0
    "48833c2402"        # cmp qword [rsp], 2           ; argc < 2: write status 0
    "721a"              # jb write
    "488b742410"        # mov rsi, [rsp+16]            ; argv[1]
    "0fb60e"            # digit: movzx ecx, byte [rsi]
    "83e930"            # sub ecx, '0'
    "83f909"            # cmp ecx, 9                   ; NUL or non-digit ends the number
    "770a"              # ja write
    "6bdb0a"            # imul ebx, ebx, 10
    "01cb"              # add ebx, ecx
    "48ffc6"            # inc rsi
    "ebeb"              # jmp digit
    "b8ad000000"        # write: mov eax, 173          ; ioperm(0xf4, 1, 1)
    "bff4000000"        # mov edi, 0xf4
    "be01000000"        # mov esi, 1
    "ba01000000"        # mov edx, 1
    "0f05"              # syscall
    "4885c0"            # test rax, rax
    "7511"              # jnz refused
    "89d8"              # mov eax, ebx
    "baf4000000"        # mov edx, 0xf4
    "ee"                # out dx, al                   ; the VM ends here if the device exists
    "31ff"              # xor edi, edi
    "b83c000000"        # mov eax, 60                  ; exit(0): still running, no device
    "0f05"              # syscall
    "bf01000000"        # refused: mov edi, 1
    "b83c000000"        # mov eax, 60                  ; exit(1)
    "0f05"              # syscall
)

ELF64_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
ELF64_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
PF_R_X = 0x5


def build_exit_tool() -> bytes:
    """The complete ELF executable of ``pyhv-exit``."""
    code_offset = ELF64_HEADER.size + ELF64_PROGRAM_HEADER.size
    image_size = code_offset + len(EXIT_CODE)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, version 1, SysV
    header = ELF64_HEADER.pack(
        ident, ET_EXEC, EM_X86_64, 1,
        LOAD_ADDRESS + code_offset,      # e_entry
        ELF64_HEADER.size,               # e_phoff
        0,                               # e_shoff: no section headers
        0,                               # e_flags
        ELF64_HEADER.size, ELF64_PROGRAM_HEADER.size, 1,
        0, 0, 0,                         # no sections
    )
    program_header = ELF64_PROGRAM_HEADER.pack(
        PT_LOAD, PF_R_X,
        0, LOAD_ADDRESS, LOAD_ADDRESS,   # file offset, virtual and physical address
        image_size, image_size,          # file and memory size
        0x1000,                          # alignment
    )
    return header + program_header + EXIT_CODE

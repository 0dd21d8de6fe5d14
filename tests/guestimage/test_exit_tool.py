"""pyhv-exit: a well-formed ELF whose code asks for port 0xf4 and writes the status to it."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from pyhv.guestimage.exit_tool import EXIT_CODE, LOAD_ADDRESS, build_exit_tool


def test_elf_header_describes_one_loadable_executable_segment() -> None:
    image = build_exit_tool()
    ident, e_type, machine, _, entry, phoff, shoff, _, ehsize, phentsize, phnum, _, shnum, _ = struct.unpack_from(
        "<16sHHIQQQIHHHHHH", image, 0)
    assert ident[:4] == b"\x7fELF" and ident[4] == 2 and ident[5] == 1
    assert (e_type, machine, phnum, shnum, shoff) == (2, 62, 1, 0, 0)
    p_type, flags, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", image, phoff)
    assert (p_type, offset, vaddr) == (1, 0, LOAD_ADDRESS)
    assert flags & 1 and not flags & 2  # executable, not writable
    assert filesz == memsz == len(image)
    assert image[entry - LOAD_ADDRESS:] == EXIT_CODE
    assert entry - LOAD_ADDRESS == ehsize + phentsize


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_disassembly_is_ioperm_then_out_to_the_debug_exit_port(tmp_path: Path) -> None:
    raw = tmp_path / "code.bin"
    raw.write_bytes(EXIT_CODE)
    listing = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", str(raw)],
                             stdout=subprocess.PIPE, check=True, universal_newlines=True).stdout
    instructions = [line.split("\t")[-1].strip() for line in listing.splitlines() if "\t" in line]
    assert "mov    $0xad,%eax" in instructions  # ioperm
    assert "mov    $0xf4,%edi" in instructions
    assert instructions.index("out    %al,(%dx)") > instructions.index("mov    $0xf4,%edx")
    assert instructions.count("syscall") == 3
    assert "(bad)" not in listing


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the tool as an unprivileged user")
def test_runs_and_reports_a_refused_ioperm_as_status_1() -> None:
    # Unprivileged, ioperm fails before any port access, so this is safe to run on the host.
    # pytest's tmp_path lies below a 0700 directory that the unprivileged user cannot enter.
    directory = Path(tempfile.mkdtemp(prefix="pyhv-exit-test-"))
    try:
        directory.chmod(0o755)
        tool = directory / "pyhv-exit"
        tool.write_bytes(build_exit_tool())
        tool.chmod(0o755)
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 "--inh-caps=-all", "--bounding-set=-all", str(tool), "3"])
    finally:
        shutil.rmtree(str(directory))
    assert result.returncode == 1  # 126/127 would mean the kernel refused to execute it

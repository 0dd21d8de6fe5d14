"""Damaged images of every format give a BootError or load; nothing else escapes."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import List, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boot_images import build_bzimage, build_elf, multiboot_header
from pyhv.boot import load_kernel
from pyhv.errors import BootError
from pyhv.memory import GuestMemory

MiB = 1 << 20
VMLINUX = build_elf([(0x1000000, b"\x90" * 256, 0x2000), (0x1200000, b"data" * 16, 0x100)], 0x1000000,
                    notes=b"")
SAMPLES = {
    "bzimage": build_bzimage(gzip.compress(VMLINUX), init_size=0x400000),
    "vmlinux": VMLINUX,
    "multiboot-elf": build_elf([(0x200000, b"\xf4" * 64, 0x1000)], 0x200000, elf64=False,
                               prologue=multiboot_header()),
    "multiboot-aout": bytes(16) + multiboot_header(aout=(0x100010, 0x100000, 0, 0x102000, 0x100040)) + bytes(200),
}
MEMORY = GuestMemory(64 * MiB)  # shared: each example overwrites what it needs


def _mutate(data: bytes, edits: List[Tuple[int, int]], cut: int) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out[:max(1, len(out) - cut)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(SAMPLES)),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
    cut=st.sampled_from([0, 0, 0, 1, 17, 300, 5000]),
    decompress=st.booleans(),
)
def test_damaged_images_fail_cleanly(tmp_path_factory, kind: str, edits: List[Tuple[int, int]],
                                     cut: int, decompress: bool) -> None:
    kernel = tmp_path_factory.mktemp("fuzz") / kind
    kernel.write_bytes(_mutate(SAMPLES[kind], edits, cut))
    try:
        load_kernel(MEMORY, kernel, None, "console=ttyS0", decompress=decompress)
    except BootError as err:
        assert str(kernel) in str(err)


def test_undamaged_samples_load() -> None:
    for kind, data in SAMPLES.items():
        path = Path(f"/tmp/pyhv-boot-sample-{kind}-{id(data)}")
        path.write_bytes(data)
        try:
            load_kernel(MEMORY, path)
        finally:
            path.unlink()

"""bench/blk: the buffers both sides copy from and into start on page boundaries, as a
guest's block layer gives them (a copy's cost depends on where it starts in a cache line)."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH_DIR))
import blk as blk_bench  # noqa: E402  (bench/ is not a package)


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


@pytest.mark.parametrize("size", [4096, 1 << 20, 1000])
def test_the_host_buffers_start_on_pages_and_hold_the_fill(size):
    buffers = blk_bench._page_buffers(8, size)
    assert len(buffers) == 8
    for view in buffers:
        assert len(view) == size
        assert _address(view) % blk_bench.PAGE == 0
        assert view[0] == 0x5A and view[size - 1] == 0x5A


@pytest.mark.parametrize("write", [False, True])
def test_the_device_requests_data_in_whole_pages(tmp_path, write):
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * (4 << 20))
    work = blk_bench.Workload("1 MiB", 1 << 20, False, write, 4, 4)
    rig = blk_bench.DeviceRig(str(image), "raw", work, use_iothread=False, workers=0)
    try:
        for head, header in rig.headers.items():
            data = rig.chains[head][1]
            assert data.gpa == blk_bench.PAGE * -(-(header + 16) // blk_bench.PAGE)
            assert data.gpa % blk_bench.PAGE == 0 and data.length == work.size
        assert rig.run([0, 1 << 20, 2 << 20, 3 << 20, 0, 1 << 20]) > 0
    finally:
        rig.close()

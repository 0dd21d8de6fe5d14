"""Images written by pyhv pass qemu-img check and hold exactly what was written."""

from __future__ import annotations

import os
import random

import pytest

from pyhv.block import open_image
from pyhv.block.qcow2 import create_qcow2

from qemu_tools import needs_qemu, pattern, qemu_check, qemu_img, qemu_read_raw, write_file

pytestmark = needs_qemu
MiB = 1 << 20


def _apply(image, model: bytearray, rng: random.Random, count: int) -> None:
    for step in range(count):
        op = rng.random()
        length = rng.choice([1, 100, 512, 4096, 65536, 100000, 300000])
        offset = rng.randrange(0, len(model) - length)
        if op < 0.75:
            data = pattern(rng.randrange(1 << 30), length)
            image.write(offset, data)
            model[offset:offset + length] = data
        elif op < 0.9:
            image.write_zeroes(offset, length)
            model[offset:offset + length] = bytes(length)
        else:
            image.flush()


@pytest.mark.parametrize("version,cluster_size", [(3, 65536), (2, 65536), (3, 512),
                                                  (3, 4096), (2, 2 * MiB)])
def test_random_writes_pass_qemu_check_and_compare(tmp, version, cluster_size):
    path = os.path.join(tmp, "w.qcow2")
    size = 6 * MiB
    create_qcow2(path, size, cluster_size=cluster_size, version=version)
    assert qemu_check(path).get("leaks", 0) == 0
    model = bytearray(size)
    rng = random.Random(version * 1000 + cluster_size)
    with open_image(path) as image:
        _apply(image, model, rng, 60)
        assert image.read(0, size) == bytes(model)
    report = qemu_check(path)
    assert report.get("leaks", 0) == 0
    assert qemu_read_raw(path, os.path.join(tmp, "out.raw")) == bytes(model)
    expected = os.path.join(tmp, "model.raw")
    write_file(expected, bytes(model))
    assert qemu_img("compare", "-f", "qcow2", "-F", "raw", path, expected,
                    check=False).returncode == 0


def test_overwrite_qemu_compressed_and_backed_clusters(tmp):
    """Partial writes over compressed clusters and over backing data copy the rest."""
    raw = os.path.join(tmp, "src.raw")
    content = bytearray(b"abcdefgh" * (MiB // 8)) * 2
    write_file(raw, bytes(content))
    base = os.path.join(tmp, "base.qcow2")
    qemu_img("convert", "-c", "-O", "qcow2", raw, base)
    top = os.path.join(tmp, "top.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    with open_image(base, format="qcow2") as image:
        image.write(1000, b"X" * 10)  # inside a compressed cluster
        content[1000:1010] = b"X" * 10
    with open_image(top) as image:
        image.write(70000, b"Y" * 5)  # copy-on-write from the backing file
        assert image.read(65536, 65536) == bytes(content[65536:70000]) + b"Y" * 5 + \
            bytes(content[70005:131072])
    qemu_check(base)
    assert qemu_check(top).get("leaks", 0) == 0
    expected = bytearray(content)
    expected[70000:70005] = b"Y" * 5
    assert qemu_read_raw(top, os.path.join(tmp, "o.raw")) == bytes(expected)


def test_refcount_table_growth_with_small_clusters(tmp):
    """512-byte clusters: a refcount block covers 128 KiB and the one-cluster table 8 MiB,
    so writing 9 MiB needs new blocks and a larger table (moved, header rewritten)."""
    path = os.path.join(tmp, "g.qcow2")
    create_qcow2(path, 16 * MiB, cluster_size=512)
    data = pattern(5, 9 * MiB)
    with open_image(path) as image:
        old_table = image.refcounts.table_offset
        image.write(MiB, data)
        assert image.refcounts.table_offset != old_table
    assert qemu_check(path).get("leaks", 0) == 0
    with open_image(path, read_only=True) as image:
        assert image.read(MiB, len(data)) == data


def test_discard_and_zero_free_clusters(tmp):
    path = os.path.join(tmp, "d.qcow2")
    create_qcow2(path, 4 * MiB)
    with open_image(path) as image:
        image.write(0, pattern(1, 4 * MiB))
        image.discard(MiB, MiB)
        image.write_zeroes(2 * MiB + 100, MiB)
        data = image.read(0, 4 * MiB)
    assert data[MiB:2 * MiB] == bytes(MiB)
    assert data[2 * MiB + 100:3 * MiB + 100] == bytes(MiB)
    assert data[:MiB] == pattern(1, 4 * MiB)[:MiB]
    report = qemu_check(path)
    assert report.get("leaks", 0) == 0
    # the freed clusters are reused, so the file stops growing
    size_before = os.path.getsize(path)
    with open_image(path) as image:
        image.write(MiB, pattern(2, MiB))
    assert os.path.getsize(path) == size_before
    qemu_check(path)


def test_lazy_refcounts_sets_and_clears_dirty_bit(tmp):
    path = os.path.join(tmp, "lazy.qcow2")
    create_qcow2(path, MiB, lazy_refcounts=True)
    image = open_image(path)
    image.write(0, b"z" * 4096)
    with open(path, "rb") as f:
        assert int.from_bytes(f.read(80)[72:80], "big") & 1  # dirty while open
    image.close()
    with open(path, "rb") as f:
        assert not int.from_bytes(f.read(80)[72:80], "big") & 1
    qemu_check(path)


def test_reopen_of_dirty_image_repairs_refcounts(tmp):
    path = os.path.join(tmp, "dirty.qcow2")
    qemu_img("create", "-f", "qcow2", "-o", "lazy_refcounts=on", path, "1M")
    with open_image(path) as image:
        image.write(0, b"a" * 65536)
    with open(path, "r+b") as f:  # simulate a crash with lazy refcounts: dirty, count lost
        f.seek(79)
        f.write(b"\x01")
    with open_image(path, read_only=True) as image:
        assert image.refcounts.get(0) == 1
    with open_image(path) as image:
        assert image.read(0, 65536) == b"a" * 65536
    qemu_check(path)

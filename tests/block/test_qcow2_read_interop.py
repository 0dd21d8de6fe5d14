"""Images written by qemu-img/qemu-io read back bit-exact through pyhv."""

from __future__ import annotations

import os
import random

import pytest

from pyhv.block import open_image

from qemu_tools import needs_qemu, pattern, qemu_img, qemu_io, qemu_read_raw, write_file

pytestmark = needs_qemu
MiB = 1 << 20


def _random_writes(rng: random.Random, size: int, count: int):
    for _ in range(count):
        length = rng.choice([1, 511, 512, 4096, 65536, 70000, 200000])
        offset = rng.randrange(0, size - length)
        yield offset, length, rng.randrange(1, 256)


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("cluster_size", [512, 4096, 65536, 2 * MiB])
def test_random_qemu_writes_read_back(tmp, compat, cluster_size):
    path = os.path.join(tmp, "img.qcow2")
    size = 8 * MiB
    qemu_img("create", "-f", "qcow2", "-o", f"compat={compat},cluster_size={cluster_size}",
             path, str(size))
    rng = random.Random(cluster_size * 7 + len(compat))
    commands = [f"write -P {p} {o} {n}" for o, n, p in _random_writes(rng, size, 12)]
    if compat == "1.1":
        zero_at = rng.randrange(0, size // 2) & ~511
        commands.append(f"write -z {zero_at} {min(cluster_size * 3, size - zero_at)}")
    qemu_io(path, commands)
    expected = qemu_read_raw(path, os.path.join(tmp, "expected.raw"))
    with open_image(path, read_only=True) as image:
        assert image.size == size
        assert image.read(0, size) == expected
        # unaligned reads through the middle of clusters agree too
        for _ in range(20):
            offset = rng.randrange(0, size - 100000)
            length = rng.randrange(1, 100000)
            assert image.read(offset, length) == expected[offset:offset + length]


@pytest.mark.parametrize("cluster_size", [4096, 65536])
def test_compressed_clusters_read_back(tmp, cluster_size):
    raw = os.path.join(tmp, "src.raw")
    data = bytearray(4 * MiB)
    for i in range(0, len(data), 8192):
        data[i:i + 100] = (b"compressible %d " % i) * 5 + bytes(100 - len(b"compressible ") * 0)[:0]
    data[MiB:MiB + 70000] = pattern(3, 70000)  # some incompressible clusters
    write_file(raw, bytes(data))
    path = os.path.join(tmp, "c.qcow2")
    qemu_img("convert", "-c", "-O", "qcow2", "-o", f"cluster_size={cluster_size}", raw, path)
    with open_image(path, read_only=True) as image:
        assert image.read(0, len(data)) == bytes(data)
        assert any(e.compressed for e in image.block_status(0, image.size))


def test_backing_chain_three_levels(tmp):
    base = os.path.join(tmp, "base.qcow2")
    mid = os.path.join(tmp, "mid.qcow2")
    top = os.path.join(tmp, "top.qcow2")
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_io(base, ["write -P 1 0 1M", "write -P 2 3M 1M"])
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid)
    qemu_io(mid, ["write -P 3 512k 1M", "write -z 3M 64k"])
    qemu_img("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
    qemu_io(top, ["write -P 4 100000 5000"])
    expected = qemu_read_raw(top, os.path.join(tmp, "exp.raw"))
    with open_image(top, read_only=True) as image:
        assert len(image.backing_chain()) == 3
        assert image.read(0, image.size) == expected


def test_backing_smaller_than_overlay_reads_zero_past_its_end(tmp):
    base = os.path.join(tmp, "base.raw")
    write_file(base, b"\x07" * 65536)
    top = os.path.join(tmp, "top.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top, "1M")
    with open_image(top, read_only=True) as image:
        data = image.read(0, 1 << 20)
    assert data[:65536] == b"\x07" * 65536
    assert data[65536:] == bytes((1 << 20) - 65536)


def test_refcount_order_variants_readable(tmp):
    for bits in (1, 8, 64):
        path = os.path.join(tmp, f"r{bits}.qcow2")
        qemu_img("create", "-f", "qcow2", "-o", f"refcount_bits={bits}", path, "2M")
        qemu_io(path, ["write -P 9 4096 8192"])
        with open_image(path, read_only=True) as image:
            assert image.read(4096, 8192) == b"\x09" * 8192
            assert image.refcounts.get(0) == 1

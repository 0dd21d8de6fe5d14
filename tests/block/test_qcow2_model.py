"""Hypothesis: random request sequences on qcow2 (with and without a backing file) behave
exactly like a flat bytearray, and leave an image qemu-img finds consistent."""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.block import open_image
from pyhv.block.qcow2 import create_qcow2

from qemu_tools import HAVE_QEMU_IMG, qemu_check

SIZE = 1 << 20
CLUSTER = 4096

_offsets = st.integers(0, SIZE - 1)
_ops = st.lists(st.tuples(st.sampled_from(["write", "zero", "discard", "flush", "reopen"]),
                          _offsets, st.integers(1, 3 * CLUSTER + 5), st.integers(0, 255)),
                min_size=1, max_size=25)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, version=st.sampled_from([2, 3]), backed=st.booleans())
def test_matches_flat_model(ops, version, backed):
    with tempfile.TemporaryDirectory() as tmp:
        model = bytearray(SIZE)
        backing = None
        if backed:
            backing = os.path.join(tmp, "base.raw")
            model[:] = bytes(range(256)) * (SIZE // 256)
            with open(backing, "wb") as f:
                f.write(model)
        path = os.path.join(tmp, "img.qcow2")
        create_qcow2(path, SIZE, cluster_size=CLUSTER, version=version,
                     backing_file="base.raw" if backed else None,
                     backing_format="raw" if backed else None)
        image = open_image(path)
        try:
            for op, offset, length, fill in ops:
                length = min(length, SIZE - offset)
                if op == "write":
                    data = bytes([fill]) * length
                    image.write(offset, data)
                    model[offset:offset + length] = data
                elif op == "zero":
                    image.write_zeroes(offset, length)
                    model[offset:offset + length] = bytes(length)
                elif op == "discard":
                    image.discard(offset, length)
                    # discarded whole clusters read as zeros here (v3, or no backing file)
                    # or fall back to the backing data (v2 with backing): both allowed
                    start = -(-offset // CLUSTER) * CLUSTER
                    end = (offset + length) // CLUSTER * CLUSTER
                    if offset + length == SIZE:
                        end = SIZE
                    if end > start:
                        model[start:end] = image.read(start, end - start)
                        allowed_backing = bytes(range(256)) * (SIZE // 256)
                        assert model[start:end] in (bytes(end - start),
                                                    allowed_backing[start:end])
                elif op == "flush":
                    image.flush()
                else:
                    image.close()
                    image = open_image(path)
                check_at = max(0, offset - 10)
                probe = min(64, SIZE - check_at)
                assert image.read(check_at, probe) == bytes(model[check_at:check_at + probe])
            assert image.read(0, SIZE) == bytes(model)
        finally:
            image.close()
        if HAVE_QEMU_IMG:
            assert qemu_check(path).get("leaks", 0) == 0

"""A writer killed with SIGKILL mid-allocation leaves an image with no corruption (leaks
allowed), and everything it flushed before the kill reads back."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

from pyhv.block import open_image
from pyhv.block.qcow2 import create_qcow2

from qemu_tools import needs_qemu, qemu_check

pytestmark = needs_qemu

WRITER = r"""
import random, sys
from pyhv.block import open_image
path, seed, cluster = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
image = open_image(path, format="qcow2")
image.l2cache.capacity = 4  # force evictions: dirty L2 tables written mid-stream
for index, (offset, length) in enumerate(plan(seed, image.size, cluster)):
    image.write(offset, data(seed, index, length))
    if index % 7 == 6:
        image.flush()
        print("flushed", index + 1, flush=True)
"""

HELPERS = r"""
import random
def plan(seed, size, cluster):
    rng = random.Random(seed)
    slots = list(range(size // (4 * cluster)))
    rng.shuffle(slots)
    for slot in slots:
        length = rng.choice([cluster // 2, cluster, 3 * cluster, 4 * cluster - 1])
        start = slot * 4 * cluster + rng.randrange(0, 4 * cluster - length + 1)
        yield start, length
def data(seed, index, length):
    return random.Random(seed * 100003 + index).getrandbits(8 * length).to_bytes(length, "little")
"""
_helpers: dict = {}
exec(HELPERS, _helpers)


def _crash_once(tmp: str, seed: int, cluster: int) -> None:
    path = os.path.join(tmp, f"crash{seed}.qcow2")
    create_qcow2(path, max(4 << 20, cluster * 2048), cluster_size=cluster)
    proc = subprocess.Popen([sys.executable, "-c", HELPERS + WRITER, path, str(seed),
                             str(cluster)], stdout=subprocess.PIPE, text=True)
    # kill once the writer has reported a random number of flushes, so the kill lands in
    # the middle of the allocating writes whatever the machine's speed
    target = random.Random(seed).randrange(1, 30)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if int(line.split()[1]) >= 7 * target:
            break
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate()
    output = "".join(lines) + rest
    flushed = [int(line.split()[1]) for line in output.splitlines() if line.startswith("flushed")]
    durable = flushed[-1] if flushed else 0
    qemu_check(path)  # no corruption; leaks are allowed
    with open_image(path, format="qcow2", read_only=True) as image:
        for index, (offset, length) in enumerate(_helpers["plan"](seed, image.size, cluster)):
            if index >= durable:
                break
            assert image.read(offset, length) == _helpers["data"](seed, index, length), index
    # the image stays usable after repair of the leaks
    with open_image(path, format="qcow2") as image:
        image.write(0, b"after crash")
    qemu_check(path)


@pytest.mark.parametrize("seed,cluster", [(1, 4096), (2, 65536), (3, 512)])
def test_sigkill_during_allocating_writes(tmp, seed, cluster):
    _crash_once(tmp, seed, cluster)


@pytest.mark.slow
def test_sigkill_soak(tmp):
    for seed in range(10, 40):
        _crash_once(tmp, seed, random.Random(seed).choice([512, 4096, 65536]))

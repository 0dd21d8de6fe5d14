"""pyhv's block layer against qemu-img on the same files, in one run.

1. convert: a 256 MiB raw disk with mixed data and zero regions -> qcow2, `pyhv img
   convert` vs `qemu-img convert`.
2. I/O through the qcow2 backend (reads and writes, 4 KiB and 1 MiB, sequential and
   random) vs `qemu-img bench -d 1 -t writeback` on the same image (qemu-img bench has no
   random mode: its row uses a stride of 17 clusters, the nearest it offers).

Usage: python bench/img.py [--size-mib 256] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

from pyhv.block import open_image
from pyhv.block.cli import main as img_main

MiB = 1 << 20


def make_source(path: str, size: int) -> None:
    rng = random.Random(1)
    with open(path, "wb") as f:
        f.truncate(size)
        for start in range(0, size, 4 * MiB):
            if rng.random() < 0.5:  # half the 4 MiB regions hold data, half stay zero
                f.seek(start)
                f.write(rng.getrandbits(8 * 2 * MiB).to_bytes(2 * MiB, "little"))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def qemu_bench(path: str, count: int, size: int, write: bool, step: int) -> float:
    argv = ["qemu-img", "bench", "-f", "qcow2", "-d", "1", "-t", "writeback", "-c", str(count),
            "-s", str(size), "-S", str(step)] + (["-w"] if write else []) + [path]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Run completed in ([\d.]+) seconds", out).group(1))


def pyhv_io(path: str, count: int, size: int, write: bool, offsets) -> float:
    with open_image(path, format="qcow2") as image:
        buf = bytearray(size)
        view = memoryview(buf)
        data = os.urandom(size)
        start = time.perf_counter()
        for offset in offsets:
            if write:
                image.write(offset, data)
            else:
                image.readinto(offset, view)
        image.flush()
        return time.perf_counter() - start


def report(name: str, pyhv_s: float, qemu_s: float, unit: str = "s") -> None:
    print(f"{name:<34} pyhv {pyhv_s:8.3f} {unit}   qemu {qemu_s:8.3f} {unit}   "
          f"pyhv/qemu {pyhv_s / qemu_s:6.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    if not shutil.which("qemu-img"):
        print("qemu-img not found (Debian qemu-utils)", file=sys.stderr)
        return 1
    size = args.size_mib * MiB
    work = tempfile.mkdtemp(dir=args.dir)
    try:
        src = os.path.join(work, "src.raw")
        make_source(src, size)
        mine, theirs = os.path.join(work, "pyhv.qcow2"), os.path.join(work, "qemu.qcow2")
        print(f"{sys.implementation.name} {sys.version.split()[0]}, image {args.size_mib} MiB")
        t_pyhv = timed(lambda: img_main(["convert", "-f", "raw", "-O", "qcow2", src, mine]))
        t_qemu = timed(lambda: subprocess.run(["qemu-img", "convert", "-f", "raw", "-O",
                                               "qcow2", src, theirs], check=True))
        report("convert raw->qcow2 (256 MiB mixed)", t_pyhv, t_qemu)
        cs = 65536
        img = os.path.join(work, "io.qcow2")
        for size_io, count in ((4096, 4096), (MiB, 128)):
            label = "4 KiB" if size_io == 4096 else "1 MiB"
            for write in (True, False):
                kind = "write" if write else "read"
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, str(size)],
                               check=True)
                seq = [i * size_io for i in range(count)]
                t_p = pyhv_io(img, count, size_io, write, seq) if write else None
                if not write:
                    pyhv_io(img, count, size_io, True, seq)  # populate, then measure reads
                    t_p = pyhv_io(img, count, size_io, False, seq)
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, str(size)],
                               check=True)
                if not write:
                    qemu_bench(img, count, size_io, True, size_io)
                t_q = qemu_bench(img, count, size_io, write, size_io)
                report(f"sequential {label} {kind} x{count}", t_p, t_q)
                rng = random.Random(size_io)
                slots = (size - size_io) // size_io
                rand = [rng.randrange(slots) * size_io for _ in range(count)]
                stride = 17 * cs if size_io < cs else size_io
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, str(size)],
                               check=True)
                if not write:
                    pyhv_io(img, count, size_io, True, rand)
                t_p = pyhv_io(img, count, size_io, write, rand)
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, str(size)],
                               check=True)
                n_q = min(count, size // stride)
                if not write:
                    qemu_bench(img, n_q, size_io, True, stride)
                t_q = qemu_bench(img, n_q, size_io, write, stride) * count / n_q
                report(f"random {label} {kind} x{count}", t_p, t_q)
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())

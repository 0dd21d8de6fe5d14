"""``pyhv img`` against qemu-img: same outputs, interoperable images, one-line errors."""

from __future__ import annotations

import json
import os

import pytest

from pyhv.block import open_image
from pyhv.block.cli import main

from qemu_tools import needs_qemu, pattern, qemu_check, qemu_img, qemu_io, qemu_read_raw, \
    write_file

pytestmark = needs_qemu
MiB = 1 << 20


def run(capsys, *argv: str):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_sizes_and_options_match_qemu(tmp, capsys):
    mine, theirs = os.path.join(tmp, "m.qcow2"), os.path.join(tmp, "q.qcow2")
    assert run(capsys, "create", "-f", "qcow2", "-o", "cluster_size=4K,compat=0.10",
               mine, "1.5G")[0] == 0
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4K,compat=0.10", theirs, "1.5G")
    mine_info = json.loads(qemu_img("info", "--output=json", mine).stdout)
    their_info = json.loads(qemu_img("info", "--output=json", theirs).stdout)
    for key in ("virtual-size", "cluster-size", "format", "format-specific"):
        assert mine_info[key] == their_info[key]
    qemu_check(mine)


def test_info_json_and_human_match_qemu(tmp, capsys, monkeypatch):
    monkeypatch.chdir(tmp)
    qemu_img("create", "-f", "qcow2", "base.qcow2", "10M")
    qemu_io("base.qcow2", ["write -P 1 0 64k"])
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    qemu_io("top.qcow2", ["write -P 2 128k 64k", "write -z 256k 64k"])
    code, out, _ = run(capsys, "info", "--output=json", "top.qcow2")
    assert code == 0
    assert json.loads(out) == json.loads(qemu_img("info", "--output=json", "top.qcow2").stdout)
    code, out, _ = run(capsys, "info", "top.qcow2")
    assert out == qemu_img("info", "top.qcow2").stdout
    code, out, _ = run(capsys, "info", "--output=json", "--backing-chain", "top.qcow2")
    assert [i["filename"] for i in json.loads(out)] == ["top.qcow2", "base.qcow2"]


def test_map_matches_qemu(tmp, capsys, monkeypatch):
    monkeypatch.chdir(tmp)
    qemu_img("create", "-f", "qcow2", "base.qcow2", "10M")
    qemu_io("base.qcow2", ["write -P 1 0 64k", "write -P 1 1M 200k"])
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    qemu_io("top.qcow2", ["write -P 2 128k 64k", "write -z 256k 64k", "write -P 3 1M 4k"])
    for output in ("human", "json"):
        code, out, _ = run(capsys, "map", f"--output={output}", "top.qcow2")
        assert code == 0
        assert out == qemu_img("map", f"--output={output}", "top.qcow2").stdout


@pytest.mark.parametrize("out_fmt,compress", [("qcow2", False), ("qcow2", True), ("raw", False)])
def test_convert_roundtrip(tmp, capsys, out_fmt, compress):
    src = os.path.join(tmp, "src.raw")
    data = bytearray(4 * MiB)
    data[100000:300000] = pattern(1, 200000)
    data[2 * MiB:2 * MiB + 65536] = b"text " * 13107 + b"x"
    write_file(src, bytes(data))
    dst = os.path.join(tmp, "dst." + out_fmt)
    argv = ["convert", "-f", "raw", "-O", out_fmt, "-p"] + (["-c"] if compress else [])
    code, out, _ = run(capsys, *argv, src, dst)
    assert code == 0 and "100.00/100%" in out
    assert qemu_img("compare", "-f", "raw", "-F", out_fmt, src, dst,
                    check=False).returncode == 0
    if out_fmt == "qcow2":
        report = qemu_check(dst)
        assert report.get("leaks", 0) == 0
        assert bool(report.get("compressed-clusters")) == compress
        back = os.path.join(tmp, "back.raw")
        assert run(capsys, "convert", "-O", "raw", dst, back)[0] == 0
        with open(back, "rb") as f:
            assert f.read() == bytes(data)


def test_check_reports_and_repairs_leaks(tmp, capsys):
    path = os.path.join(tmp, "leak.qcow2")
    qemu_img("create", "-f", "qcow2", path, "1M")
    with open_image(path) as image:
        leaked = image.refcounts.alloc(3)  # allocated, never referenced: a leak
        os.pwrite(image.fd, bytes(3 * 65536), leaked)
    code, out, _ = run(capsys, "check", path)
    assert code == 3 and "3 leaked clusters were found" in out
    assert qemu_img("check", path, check=False).returncode == 3
    code, out, _ = run(capsys, "check", "-r", "leaks", path)
    assert code == 0 and "No errors were found" in out
    assert qemu_img("check", path, check=False).returncode == 0


def test_check_finds_corruption(tmp, capsys):
    path = os.path.join(tmp, "bad.qcow2")
    qemu_img("create", "-f", "qcow2", path, "1M")
    qemu_io(path, ["write -P 5 0 64k"])
    with open_image(path) as image:
        host = image.l2_entry(0) & 0x00FFFFFFFFFFFE00
        image.refcounts.set(host >> 16, 0)  # referenced but free: corruption
    code, out, err = run(capsys, "check", path)
    assert code == 2 and "errors were found" in out and "refcount=0 reference=1" in err
    code, out, _ = run(capsys, "check", "-r", "all", path)
    assert code == 0
    assert qemu_img("check", path, check=False).returncode == 0


def test_resize_grow_and_shrink(tmp, capsys):
    path = os.path.join(tmp, "r.qcow2")
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", path, "1M")
    qemu_io(path, ["write -P 7 0 1M"])
    assert run(capsys, "resize", path, "+300M")[0] == 0  # needs a bigger L1 table
    qemu_check(path)
    assert json.loads(qemu_img("info", "--output=json", path).stdout)["virtual-size"] == \
        301 * MiB
    code, _, err = run(capsys, "resize", path, "512K")
    assert code == 1 and "--shrink" in err
    assert run(capsys, "resize", "--shrink", path, "512K")[0] == 0
    qemu_check(path)
    with open_image(path, read_only=True) as image:
        assert image.size == 512 * 1024 and image.read(0, 512 * 1024) == b"\x07" * 512 * 1024


def test_commit_and_rebase(tmp, capsys, monkeypatch):
    monkeypatch.chdir(tmp)
    qemu_img("create", "-f", "qcow2", "base.qcow2", "4M")
    qemu_io("base.qcow2", ["write -P 1 0 4M"])
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    qemu_io("top.qcow2", ["write -P 2 1M 100k", "write -z 3M 64k"])
    expected = qemu_read_raw("top.qcow2", "expected.raw")
    # safe rebase onto an empty base keeps the guest-visible content
    qemu_img("create", "-f", "qcow2", "empty.qcow2", "4M")
    assert run(capsys, "rebase", "-b", "empty.qcow2", "-F", "qcow2", "top.qcow2")[0] == 0
    assert qemu_read_raw("top.qcow2", "after.raw") == expected
    qemu_check("top.qcow2")
    # unsafe rebase back, then commit into the original base
    assert run(capsys, "rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")[0] == 0
    code, out, _ = run(capsys, "commit", "top.qcow2")
    assert code == 0 and "Image committed." in out
    assert qemu_read_raw("base.qcow2", "base.raw") == expected
    assert qemu_read_raw("top.qcow2", "top.raw") == expected
    qemu_check("base.qcow2")
    qemu_check("top.qcow2")


def test_compare_outputs_and_codes(tmp, capsys):
    a, b = os.path.join(tmp, "a.qcow2"), os.path.join(tmp, "b.qcow2")
    qemu_img("create", "-f", "qcow2", a, "1M")
    qemu_img("create", "-f", "qcow2", b, "1M")
    assert run(capsys, "compare", a, b)[:2] == (0, "Images are identical.\n")
    qemu_io(b, ["write -P 1 4608 1"])
    code, out, _ = run(capsys, "compare", a, b)
    assert (code, out) == (1, qemu_img("compare", a, b, check=False).stdout)
    assert run(capsys, "compare", a, os.path.join(tmp, "missing"))[0] == 2


@pytest.mark.parametrize("argv,needle", [
    (["info", "/nonexistent.qcow2"], "No such file"),
    (["create", "-f", "qcow2", "{tmp}/x.qcow2", "12Q"], "invalid size"),
    (["create", "-f", "qcow2", "-o", "cluster_size=1000", "{tmp}/x.qcow2", "1M"],
     "power of two"),
    (["create", "-f", "vmdk", "{tmp}/x.vmdk", "1M"], "unknown image format"),
    (["bogus"], "invalid choice"),
    ([], "give a command"),
])
def test_errors_are_one_line(tmp, capsys, argv, needle):
    code, out, err = run(capsys, *[a.replace("{tmp}", tmp) for a in argv])
    assert code != 0
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err

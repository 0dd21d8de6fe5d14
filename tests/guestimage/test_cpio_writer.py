"""The newc writer against GNU cpio's reader, an independent parser, and itself (determinism)."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyhv.guestimage.cpio import CpioError, CpioWriter, compress

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed (apt-get install cpio)")


def parse_newc(archive: bytes) -> List[Tuple[str, Dict[str, int], bytes]]:
    """A reader written from the format description, independent of the writer's code."""
    entries = []
    offset = 0
    names = ["ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
             "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check"]
    while True:
        assert offset % 4 == 0, f"header at unaligned offset {offset}"
        assert archive[offset:offset + 6] == b"070701", f"bad magic at {offset}"
        fields = {name: int(archive[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i, name in enumerate(names)}
        name_start = offset + 110
        name = archive[name_start:name_start + fields["namesize"] - 1].decode()
        assert archive[name_start + fields["namesize"] - 1] == 0
        data_start = (name_start + fields["namesize"] + 3) & ~3
        data = archive[data_start:data_start + fields["filesize"]]
        offset = (data_start + fields["filesize"] + 3) & ~3
        if name == "TRAILER!!!":
            assert offset == len(archive)
            return entries
        entries.append((name, fields, data))


def sample_archive(mtime: int = 0) -> bytes:
    writer = CpioWriter(mtime=mtime)
    writer.add_directory("etc")
    writer.add_file("etc/hostname", b"pyhv\n", mode=0o644)
    for size in range(6):  # every padding remainder of name and data
        writer.add_file(f"data/f{'x' * size}", bytes(range(size)), mode=0o600)
    writer.add_file("bin/tool", b"#!/bin/sh\necho hi\n", mode=0o755)
    writer.add_symlink("bin/sh", "/bin/busybox")
    writer.add_directory("tmp", mode=0o1777)
    writer.add_device("dev/console", "c", 5, 1, mode=0o600)
    writer.add_device("dev/vda", "b", 254, 0, mode=0o660)
    return writer.finish()


@needs_cpio
def test_gnu_cpio_lists_every_entry_in_order() -> None:
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=sample_archive(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, check=True).stdout.decode().split()
    expected = ["etc", "etc/hostname", "data"] + [f"data/f{'x' * n}" for n in range(6)] + [
        "bin", "bin/tool", "bin/sh", "tmp", "dev", "dev/console", "dev/vda"]
    assert listing == expected


@needs_cpio
@pytest.mark.skipif(os.geteuid() != 0, reason="extracting device nodes needs root (mknod)")
def test_gnu_cpio_extracts_contents_modes_links_and_devices(tmp_path: Path) -> None:
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=sample_archive(),
                   cwd=str(tmp_path), check=True, stderr=subprocess.PIPE)
    assert (tmp_path / "etc/hostname").read_bytes() == b"pyhv\n"
    assert (tmp_path / "data/fxxx").read_bytes() == b"\x00\x01\x02"
    assert stat.S_IMODE((tmp_path / "bin/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "data/f").stat().st_mode) == 0o600
    assert os.readlink(str(tmp_path / "bin/sh")) == "/bin/busybox"
    assert stat.S_IMODE((tmp_path / "tmp").stat().st_mode) == 0o1777
    console = (tmp_path / "dev/console").lstat()
    assert stat.S_ISCHR(console.st_mode) and (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)
    disk = (tmp_path / "dev/vda").lstat()
    assert stat.S_ISBLK(disk.st_mode) and (os.major(disk.st_rdev), os.minor(disk.st_rdev)) == (254, 0)
    assert (tmp_path / "bin/tool").stat().st_uid == 0


def test_headers_follow_newc_layout() -> None:
    entries = parse_newc(sample_archive(mtime=1234))
    by_name = {name: (fields, data) for name, fields, data in entries}
    assert [fields["ino"] for _, fields, _ in entries] == list(range(1, len(entries) + 1))
    assert all(fields["uid"] == 0 and fields["gid"] == 0 and fields["mtime"] == 1234 for _, fields, _ in entries)
    assert by_name["data"][0]["nlink"] == 2 and by_name["etc/hostname"][0]["nlink"] == 1
    assert by_name["bin/sh"][1] == b"/bin/busybox"
    assert stat.S_ISLNK(by_name["bin/sh"][0]["mode"])
    assert (by_name["dev/console"][0]["rdevmajor"], by_name["dev/console"][0]["rdevminor"]) == (5, 1)


def test_same_inputs_give_same_bytes_and_mtime_is_recorded() -> None:
    assert sample_archive() == sample_archive()
    assert sample_archive(mtime=0) != sample_archive(mtime=1)
    packed = compress(sample_archive(), "gzip")
    assert packed == compress(sample_archive(), "gzip")
    assert gzip.decompress(packed) == sample_archive()
    assert compress(sample_archive(), None) == sample_archive()


def test_missing_parents_are_created_in_order() -> None:
    writer = CpioWriter()
    writer.add_file("/a/b/c/file", b"x")
    assert writer.names() == ["a", "a/b", "a/b/c", "a/b/c/file"]


file_names = st.text(alphabet="abcdefghij_-.0123456789", min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(file_names, st.binary(max_size=40), max_size=8), st.integers(0, 2**32 - 1))
def test_any_file_set_reads_back(files: Dict[str, bytes], mtime: int) -> None:
    writer = CpioWriter(mtime=mtime)
    for name, data in files.items():
        writer.add_file(f"dir/{name}", data)
    entries = parse_newc(writer.finish())
    read_back = {name[len("dir/"):]: data for name, _, data in entries if name.startswith("dir/")}
    assert read_back == files


@pytest.mark.parametrize("path", ["", "/", "a/../b", "./a", "a//b", "..", "a\0b"])
def test_bad_paths_are_refused_with_the_path_named(path: str) -> None:
    with pytest.raises(CpioError, match="cpio entry"):
        CpioWriter().add_file(path, b"")


def test_duplicates_file_parents_and_reserved_names_are_refused() -> None:
    writer = CpioWriter()
    writer.add_file("etc/passwd", b"")
    with pytest.raises(CpioError, match="'etc/passwd': added twice"):
        writer.add_file("etc/passwd", b"")
    with pytest.raises(CpioError, match="parent 'etc/passwd' is not a directory"):
        writer.add_file("etc/passwd/x", b"")
    with pytest.raises(CpioError, match="reserved"):
        writer.add_file("TRAILER!!!", b"")
    with pytest.raises(CpioError, match="kind 'x'"):
        writer.add_device("dev/null", "x", 1, 3)
    with pytest.raises(CpioError, match="device number"):
        writer.add_device("dev/big", "c", 1 << 32, 0)
    with pytest.raises(CpioError, match="target"):
        writer.add_symlink("bin/empty", "")
    writer.finish()
    with pytest.raises(CpioError, match="already finished"):
        writer.add_file("late", b"")


def test_bad_mtime_and_compression_are_refused() -> None:
    with pytest.raises(CpioError, match="mtime"):
        CpioWriter(mtime=-1)
    with pytest.raises(CpioError, match="'xz' is not supported"):
        compress(b"", "xz")

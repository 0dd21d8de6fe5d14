"""`pyhv guest build|path|clean`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pyhv.guestimage import main


def test_path_prints_the_cache_root(tmp_path: Path) -> None:
    out = io.StringIO()
    assert main(["path", "--cache-dir", str(tmp_path)], stdout=out) == 0
    assert out.getvalue() == f"{tmp_path}\n"


def test_build_prints_what_to_boot(monkeypatch: pytest.MonkeyPatch, debian_packages, tmp_path: Path) -> None:
    kernel, busybox = debian_packages
    from pyhv.guestimage import default
    monkeypatch.setattr(default, "fetch_kernel", lambda root: kernel.vmlinuz.parent)
    monkeypatch.setattr(default, "fetch_busybox", lambda root: busybox)
    out = io.StringIO()
    assert main(["build", "--cache-dir", str(tmp_path)], stdout=out) == 0
    lines = dict(line.split(": ", 1) for line in out.getvalue().splitlines())
    assert lines["kernel"] == str(kernel.vmlinuz)
    assert Path(lines["initrd"]).is_file() and lines["initrd"].startswith(str(tmp_path))
    assert lines["kernel_version"] == kernel.release


def test_clean_removes_only_its_own_directories(tmp_path: Path) -> None:
    for name in ("debian/pkg_1", "guest/abc", "other"):
        (tmp_path / name).mkdir(parents=True)
    out = io.StringIO()
    assert main(["clean", "--cache-dir", str(tmp_path)], stdout=out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
    assert main(["clean", "--cache-dir", str(tmp_path)], stdout=out) == 0  # nothing left: still fine


def test_errors_are_one_line_and_non_zero(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    def no_apt(root):
        from pyhv.guestimage.debian import run_command
        monkeypatch.setenv("PATH", "/nonexistent")
        run_command(["apt-cache", "show", "linux-image-cloud-amd64"])

    from pyhv.guestimage import default
    monkeypatch.setattr(default, "fetch_kernel", no_apt)
    assert main(["build", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyhv guest build: apt-cache not found")


def test_file_in_the_way_of_the_cache_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "guest").write_text("a file where the initramfs directory belongs")
    assert main(["clean", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "guest" in err


def test_unknown_action_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err

"""-accel kvm:tcg with a Linux kernel: KVM is picked only if it can deliver int3 in long mode."""

from __future__ import annotations

import pytest

from pyhv.accel import kvm_probe
from pyhv.accel.base import Platform
from pyhv.bus import Bus
from pyhv.cpu_model import pyhv64
from pyhv.kvm.system import kvm_available
from pyhv.lifecycle import Lifecycle
from pyhv.machine import _is_linux_kernel, create_accelerator
from pyhv.memory import GuestMemory
from pyhv.testing.outcome import failed

needs_kvm = pytest.mark.skipif(kvm_available() is not None, reason=f"needs /dev/kvm: {kvm_available()}")


class _FakeOracle:
    outcome = None
    closed = 0

    def __init__(self, path):
        self.path = path

    def run(self, code, gprs, rflags, image):
        assert code == kvm_probe.INT3_THEN_HLT
        return type(self).outcome

    def close(self):
        type(self).closed += 1


@pytest.fixture
def fake_oracle(monkeypatch):
    import pyhv.testing.kvm_oracle as oracle_module

    monkeypatch.setattr(oracle_module, "KvmOracle", _FakeOracle)
    monkeypatch.setattr(kvm_probe, "_answers", {})
    _FakeOracle.closed = 0
    return _FakeOracle


def test_an_emulation_failure_on_int3_blocks_linux(fake_oracle):
    fake_oracle.outcome = failed("KVM: internal error: emulation failure")
    blocker = kvm_probe.linux_blocker("/dev/fake-kvm")
    assert blocker is not None and "int3" in blocker and "emulation failure" in blocker
    assert fake_oracle.closed == 1
    # Asked once per process and KVM node.
    fake_oracle.outcome = None
    assert kvm_probe.linux_blocker("/dev/fake-kvm") == blocker


def test_int3_reaching_the_breakpoint_handler_is_fine(fake_oracle):
    fake_oracle.outcome = failed("")._replace(vector=kvm_probe.BREAKPOINT_VECTOR)
    assert kvm_probe.linux_blocker("/dev/fake-kvm") is None


def test_int3_raising_another_vector_blocks_linux(fake_oracle):
    fake_oracle.outcome = failed("")._replace(vector=13)
    assert "vector 13" in kvm_probe.linux_blocker("/dev/fake-kvm")


@needs_kvm
def test_the_probe_answers_on_this_host():
    # Either answer is a fact about the host; the probe must give one without raising, and
    # a refusal must say why.
    blocker = kvm_probe.linux_blocker()
    assert blocker is None or "int3" in blocker


def _platform() -> Platform:
    return Platform(GuestMemory(1 << 20), Bus("pio"), Bus("mmio"), Lifecycle(), pyhv64())


def test_kvm_tcg_falls_back_to_tcg_for_linux_when_kvm_cannot_run_it(monkeypatch):
    monkeypatch.setattr(kvm_probe, "linux_blocker", lambda path: "no int3 here")
    notices = []
    accel = create_accelerator(("kvm", "tcg"), _platform(), notices.append, boots_linux=True)
    assert type(accel).__name__ == "TcgAccelerator"
    assert len(notices) == 1 and notices[0].startswith("pyhv: kvm: no int3 here; using tcg (Linux boots there in ")


def test_the_fallback_to_tcg_says_nothing_of_linux_for_other_guests(monkeypatch):
    monkeypatch.setenv("PYHV_KVM_DEVICE", "/nonexistent/kvm")
    notices = []
    accel = create_accelerator(("kvm", "tcg"), _platform(), notices.append, boots_linux=False)
    assert type(accel).__name__ == "TcgAccelerator"
    assert len(notices) == 1 and notices[0].endswith("; using tcg"), notices


@needs_kvm
def test_the_probe_is_not_asked_without_linux(monkeypatch):
    def refuse(path):
        raise AssertionError("probed")

    monkeypatch.setattr(kvm_probe, "linux_blocker", refuse)
    for names in (("kvm",), ("kvm", "tcg")):
        notices = []
        accel = create_accelerator(names, _platform(), notices.append, boots_linux=False)
        assert type(accel).__name__ == "KvmAccelerator" and notices == []
        accel.close()


@needs_kvm
@pytest.mark.parametrize("blocker", [None, "no int3 here"])
def test_a_lone_kvm_is_taken_as_asked_with_a_warning_if_linux_cannot_run(monkeypatch, blocker):
    monkeypatch.setattr(kvm_probe, "linux_blocker", lambda path: blocker)
    notices = []
    accel = create_accelerator(("kvm",), _platform(), notices.append, boots_linux=True)
    try:
        assert type(accel).__name__ == "KvmAccelerator"
    finally:
        accel.close()
    if blocker is None:
        assert notices == []
    else:
        assert len(notices) == 1 and notices[0].startswith("pyhv: warning: no int3 here;")
        assert "-accel tcg" in notices[0]


def test_only_a_bzimage_counts_as_a_linux_kernel(tmp_path):
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(bytes(0x202) + b"HdrS" + bytes(64))
    multiboot = tmp_path / "kernel.elf"
    multiboot.write_bytes(b"\x7fELF" + bytes(0x300))
    assert _is_linux_kernel(bzimage)
    assert not _is_linux_kernel(multiboot)
    assert not _is_linux_kernel(tmp_path / "missing")
    assert not _is_linux_kernel(None)

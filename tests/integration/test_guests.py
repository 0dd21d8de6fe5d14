"""The assembler test guests (tests/guests/*.S) booted as multiboot kernels, checked line by line.

Every guest prints exact lines and ends through isa-debug-exit, so a run is judged by its
whole serial output and its exit status. The same expectations hold under QEMU 7.2, the
peer, which the `qemu` tests check, so a guest that drifts from the truth is caught there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import pytest

EXIT_OK_STATUS = 33  # isa-debug-exit: (0x10 << 1) | 1
KVM_TIMEOUT_S = 60
TCG_TIMEOUT_S = 600


class GuestCase(NamedTuple):
    append: Optional[str]
    lines: List[str]
    status: int


HELLO_APPEND = "exit=5 greeting=yes"

# "{kernel}" stands for the kernel path: QEMU's multiboot command line is "KERNEL APPEND".
GUEST_CASES = {
    "hello": GuestCase(
        HELLO_APPEND,
        ["hello from the pyhv test guest", "cmdline: {kernel} " + HELLO_APPEND],
        (5 << 1) | 1,
    ),
    "modes": GuestCase(
        None,
        [
            "protected mode: cr0.pe=1 cs=0x8",
            "16-bit protected mode: cs=0x0020",
            "real mode: cr0.pe=0 cs=0x0800",
            "protected mode again: cr0.pe=1 real-mode marker=0x1234abcd",
            "long mode: efer.lma=1 cr4.pae=1 cr0.pg=1 64-bit arithmetic=0x10000000000",
        ],
        EXIT_OK_STATUS,
    ),
    "pio_mmio": GuestCase(
        "pio=300 mmio=200 reads=8",
        [
            "exit loops: start",
            "pio writes: 300",
            "mmio writes: 200",
            "pio reads: 8 x 3 sizes, all ones",
            "mmio reads: 8 x 3 sizes, all ones",
        ],
        EXIT_OK_STATUS,
    ),
    "hlt_timer": GuestCase(
        "ticks=50",
        [
            "pic: remapped to 0x20/0x28, imr=0xfe",
            "pit: channel 0 at 1 kHz, waiting for 50 ticks",
            "timer ticks: 50",
            "pic: imr after the last tick=0xff",
        ],
        EXIT_OK_STATUS,
    ),
    "exceptions": GuestCase(
        None,
        [
            "#DE vector=0 rip=faulting instruction",
            "#UD vector=6 rip=faulting instruction",
            "#GP vector=13 error=0x1230 rip=faulting instruction",
            "#PF vector=14 error=0x0 cr2=0x80000000 rip=faulting instruction",
            "#PF vector=14 error=0x3 cr2=0x40001234 rip=faulting instruction",
            "exceptions taken: 5",
        ],
        EXIT_OK_STATUS,
    ),
    # -no-reboot turns the i8042 reset into a clean exit, status 0, as in QEMU.
    "reset": GuestCase(None, ["resetting through the i8042"], 0),
    "rtc": GuestCase(
        None,
        [
            "rtc: format bcd 24-hour",
            "rtc: seconds valid",
            "rtc: minutes valid",
            "rtc: hours valid",
            "rtc: day valid",
            "rtc: month valid",
            "rtc: year valid",
            "rtc: seconds advance",
        ],
        EXIT_OK_STATUS,
    ),
}

# Where QEMU, the peer, knowingly differs from pyhv: its unassigned-memory handler reads 0,
# while a PC's PCI hole reads all ones (master abort), which pyhv returns.
QEMU_LINE_OVERRIDES = {
    "pio_mmio": {"mmio reads: 8 x 3 sizes, all ones": "mmio reads: 8 x 3 sizes, all zeros"},
}

ACCELERATORS = [
    pytest.param("kvm", marks=pytest.mark.kvm, id="kvm"),
    pytest.param("tcg", id="tcg"),
]

# Guests the software CPU cannot run yet, and why (strict: the mark must come off when they pass).
TCG_PENDING: Dict[str, str] = {}


def expected_output(case: GuestCase, kernel: Path, overrides: Optional[Dict[str, str]] = None) -> str:
    overrides = overrides or {}
    lines = [overrides.get(line, line).replace("{kernel}", str(kernel)) for line in case.lines]
    return "".join(line + "\n" for line in lines)


def assert_run_matches(
    run, case: GuestCase, kernel: Path, overrides: Optional[Dict[str, str]] = None
) -> None:
    expected = expected_output(case, kernel, overrides)
    assert (run.stdout, run.status) == (expected, case.status), run.describe()
    assert "Traceback" not in run.stderr, run.describe()


@pytest.mark.parametrize("accel", ACCELERATORS)
@pytest.mark.parametrize("guest", sorted(GUEST_CASES))
def test_guest_under_pyhv(guest, accel, guest_kernel, run_pyhv, request):
    if accel == "tcg" and guest in TCG_PENDING:
        request.applymarker(pytest.mark.xfail(reason=TCG_PENDING[guest], strict=True))
    case = GUEST_CASES[guest]
    kernel = guest_kernel(guest)
    timeout_s = KVM_TIMEOUT_S if accel == "kvm" else TCG_TIMEOUT_S
    run = run_pyhv(kernel, accel, case.append, timeout_s=timeout_s)
    assert_run_matches(run, case, kernel)


@pytest.mark.qemu
@pytest.mark.parametrize("guest", sorted(GUEST_CASES))
def test_guest_under_qemu_tcg(guest, guest_kernel, run_qemu):
    """The expectations themselves, checked against the peer (TCG: no firmware wait)."""
    case = GUEST_CASES[guest]
    kernel = guest_kernel(guest)
    run = run_qemu(kernel, "tcg", case.append)
    assert_run_matches(run, case, kernel, QEMU_LINE_OVERRIDES.get(guest))


@pytest.mark.qemu
@pytest.mark.kvm
@pytest.mark.parametrize("append", [HELLO_APPEND, None], ids=["append", "no-append"])
def test_hello_same_under_qemu_and_pyhv(append, guest_kernel, run_qemu, run_pyhv):
    kernel = guest_kernel("hello")
    qemu = run_qemu(kernel, "kvm", append)
    pyhv = run_pyhv(kernel, "kvm", append)
    assert qemu.stdout.startswith("hello from the pyhv test guest\n"), qemu.describe()
    assert (pyhv.stdout, pyhv.status) == (qemu.stdout, qemu.status), (
        f"pyhv:\n{pyhv.describe()}\nqemu:\n{qemu.describe()}"
    )


"""A guest kernel panic seen only on the serial console ends `pyhv run` with status 1 and says so.

The panics before a Linux guest's pvpanic driver is loaded reach the host only as console
lines (pyhv/panic_watch.py). tests/guests/panic.S prints what the kernel prints, then resets
(panic=-1) or stops for good (panic=0). Under -no-reboot QEMU ends the first with status 0 and
never ends the second: these are pyhv's own behaviour, so there is no QEMU case here.
"""

from __future__ import annotations

import pytest

from pyhv.devices.pvpanic import PANIC_EXIT_STATUS

ACCELERATORS = [
    pytest.param("kvm", marks=pytest.mark.kvm, id="kvm"),
    pytest.param("tcg", id="tcg"),
]
PANIC_LINE = "[    1.930832] Kernel panic - not syncing: pyhv test guest panic"
MESSAGE = "pyhv: guest kernel panicked: pyhv test guest panic"


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_a_panic_then_a_reset_ends_with_status_1_and_the_reason(accel, guest_kernel, run_pyhv):
    run = run_pyhv(guest_kernel("panic"), accel, timeout_s=120)
    assert run.status == PANIC_EXIT_STATUS, run.describe()
    assert PANIC_LINE in run.stdout and "reset ignored" not in run.stdout, run.describe()
    assert f"{MESSAGE} (seen on the serial console; the guest then reset)" in run.stderr, run.describe()
    assert "Traceback" not in run.stderr, run.describe()


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_a_panic_the_kernel_stays_in_ends_the_vm_at_its_last_line(accel, guest_kernel, run_pyhv):
    run = run_pyhv(guest_kernel("panic"), accel, "hang=1", timeout_s=120)
    assert run.status == PANIC_EXIT_STATUS, run.describe()
    assert run.stdout.rstrip().endswith("---[ end Kernel panic - not syncing: pyhv test guest panic ]---"), \
        run.describe()
    assert MESSAGE in run.stderr and "Traceback" not in run.stderr, run.describe()


def test_a_reset_without_a_panic_still_ends_with_status_0(guest_kernel, run_pyhv):
    run = run_pyhv(guest_kernel("reset"), "tcg", timeout_s=120)
    assert (run.status, run.stderr.strip()) == (0, ""), run.describe()

"""Boot time of the default guest: pyhv -accel tcg against QEMU's TCG, to a marker line.

Boots the default guest (`pyhv guest build`: the Debian cloud kernel and the busybox
initramfs, with its default command line) with ` -- echo PYHV-BOOT-MARKER` appended: the
guest's /init runs the command, then leaves through isa-debug-exit with status 0, which the
VMM turns into exit status (0 << 1) | 1 = 1. Time-to-marker is the wall time from starting
the VMM process to the complete marker line on its serial console, start-up included
(interpreter start-up for pyhv, SeaBIOS for QEMU -M pc). It runs

- `pyhv run -accel tcg` on each configured interpreter (CPython and PyPy), through a small
  wrapper that prints the software CPU's instructions retired when the VM ends, also when it
  is stopped at the timeout (SIGTERM ends `pyhv run` cleanly). These boots are cold
  (`PYHV_TCG_HINTS=off`); then, unless `--no-warm`, one boot writes the software CPU's
  hot-block hints (pyhv/accel/tcg/hints.py, PyPy) and its translated code
  (pyhv/accel/tcg/codecache.py) into a scratch directory and the next boots start from them,
  as a second boot of the same kernel does by default;
- `qemu-system-x86_64 -accel tcg -M pc` and `-M microvm` (best of the rounds);
- once more `-M pc` with `-icount shift=0`, where virtual time counts instructions, running
  `cat /proc/uptime` before the marker: uptime less idle time is the number of guest
  instructions since the kernel's clock started (so the decompressor is not in it), in units
  of 10 ms = 10 million instructions.

A VMM that does not print the marker within its timeout is reported with the last line its
console showed.

    .venv/bin/python bench/boot.py                               # CPython + PyPy + QEMU
    .venv/bin/python bench/boot.py --no-pyhv --rounds 5
    .venv/bin/python bench/boot.py --interpreter .venv-pypy/bin/python --pyhv-timeout 600 --json out.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

from _vmtiming import (
    DEBUG_EXIT_DEVICE, QEMU_BINARY, BenchError, Vmm, WatchedRun, add_vmm_arguments, chosen_interpreters,
    host_summary, interpreter_label, watch_run,
)
from pyhv.runtime_env import vm_env

MARKER = "PYHV-BOOT-MARKER"
GUEST_COMMAND = f"echo {MARKER}"
ICOUNT_COMMAND = f"cat /proc/uptime; echo {MARKER}"
GUEST_EXIT_OK_STATUS = 1  # the guest command's status 0, through isa-debug-exit
GUEST_RAM_MIB = "256"  # the Debian kernel does not reach /init in 64 MiB
INSTRUCTIONS_LINE = re.compile(r"pyhv-bench: instructions retired (\d+)")
UPTIME_LINE = re.compile(rb"^(\d+\.\d+) (\d+\.\d+)\r?$", re.MULTILINE)
ICOUNT_NS_PER_INSN = 1  # -icount shift=0: one virtual nanosecond per instruction

# Runs `pyhv run ARGS...` as the command line does, then reports the software CPU's count.
PYHV_WRAPPER = r"""
import sys
import pyhv.cli
import pyhv.machine

machines = []
plain_run = pyhv.machine.Machine.run

def counting_run(self):
    machines.append(self)
    return plain_run(self)

pyhv.machine.Machine.run = counting_run
status = 1
try:
    status = pyhv.cli.main(["run"] + sys.argv[1:])
finally:
    cpu = getattr(machines[-1].accel, "cpu", None) if machines else None
    count = getattr(cpu, "instructions_retired", None)
    if count is not None:
        sys.stderr.write("pyhv-bench: instructions retired %d\n" % count)
        sys.stderr.flush()
sys.exit(status)
"""


class BootFiles(NamedTuple):
    kernel: Path
    initrd: Path
    cmdline: str


class BootResult(NamedTuple):
    label: str
    marker_s: Optional[float]  # None: the marker never came
    status: Optional[int]
    elapsed_s: float
    last_line: str
    instructions: Optional[int]  # pyhv: retired by the software CPU; QEMU -icount: since the clock started
    rounds: int

    @property
    def reached(self) -> bool:
        return self.marker_s is not None


def default_boot_files() -> BootFiles:
    from pyhv.guestimage import build_default_guest

    guest = build_default_guest()
    return BootFiles(Path(guest.kernel), Path(guest.initrd), guest.cmdline)


# The TSC frequency microvm's kernel is told instead of calibrating it (any plausible value:
# only the guest's own clock rate depends on it, not the work it does).
MICROVM_TSC_ARGUMENT = "tsc_early_khz=2000000"


def _boot_args(files: BootFiles) -> List[str]:
    return ["-m", GUEST_RAM_MIB, "-nographic", "-no-reboot", "-device", DEBUG_EXIT_DEVICE,
            "-kernel", str(files.kernel), "-initrd", str(files.initrd)]


def append_for(files: BootFiles, command: str) -> str:
    return f"{files.cmdline} -- {command}"


def with_extra_arguments(files: BootFiles, extra: str) -> BootFiles:
    """The same guest with kernel arguments added (before ` -- `), e.g. loglevel=7 to see a hang."""
    return files._replace(cmdline=f"{files.cmdline} {extra}") if extra.strip() else files


def pyhv_vmm(python: Path, files: BootFiles, hints: str = "off", label: str = "") -> Vmm:
    """``hints``: PYHV_TCG_HINTS, "off" (a cold boot) or the directory of the hot-block hints."""
    argv = [str(python), "-c", PYHV_WRAPPER, "-accel", "tcg"] + _boot_args(files)
    env = dict(vm_env(), PYHV_TCG_HINTS=hints)
    return Vmm(f"pyhv tcg, {interpreter_label(python)}{label}", argv, env)


def qemu_vmm(machine: str, files: BootFiles, icount: bool = False) -> Vmm:
    argv = [QEMU_BINARY, "-M", machine, "-accel", "tcg", "-nodefaults", "-serial", "stdio"] + _boot_args(files)
    if icount:
        argv[5:5] = ["-icount", "shift=0"]
    return Vmm(f"qemu tcg -M {machine}" + (" -icount" if icount else ""), argv)


def instructions_reported(errors: str) -> Optional[int]:
    """The count the pyhv wrapper printed on stderr, if any."""
    found = INSTRUCTIONS_LINE.search(errors)
    return int(found.group(1)) if found else None


def icount_instructions(output: bytes) -> Optional[int]:
    """Guest instructions from /proc/uptime under -icount shift=0: (uptime - idle) virtual ns."""
    found = UPTIME_LINE.search(output)
    if found is None:
        return None
    busy_s = float(found.group(1)) - float(found.group(2))
    return round(busy_s * 1e9 / ICOUNT_NS_PER_INSN)


def boot_once(vmm: Vmm, files: BootFiles, command: str, timeout_s: float) -> WatchedRun:
    return watch_run(vmm.argv_prefix + ["-append", append_for(files, command)], {"marker": MARKER.encode()},
                     timeout_s, whole_line=True, env=vmm.env)


def measure(vmm: Vmm, files: BootFiles, rounds: int, timeout_s: float, command: str = GUEST_COMMAND) -> BootResult:
    """Best time-to-marker over `rounds`; stops at the first round that misses the marker.

    A run that printed the marker but then ended with a status other than the guest's
    success is a BenchError: the time would be of a boot that went wrong.
    """
    best: Optional[BootResult] = None
    for _ in range(rounds):
        run = boot_once(vmm, files, command, timeout_s)
        marker_s = run.marks.get("marker")
        if marker_s is not None and not run.timed_out and run.status != GUEST_EXIT_OK_STATUS:
            raise BenchError(f"{vmm.label}: printed the marker but exited with status {run.status} "
                             f"(want {GUEST_EXIT_OK_STATUS}); stderr: {run.errors[-1000:]}")
        instructions = instructions_reported(run.errors)
        if instructions is None:
            instructions = icount_instructions(run.output) if "-icount" in vmm.argv_prefix else None
        result = BootResult(vmm.label, marker_s, run.status, run.elapsed_s, run.last_line(), instructions, rounds)
        if marker_s is None:
            return result
        if best is None or marker_s < best.marker_s:
            best = result
    return best


def describe(result: BootResult, reference: Optional[BootResult], timeout_s: float) -> str:
    """One line of the report for one VMM."""
    if result.reached:
        text = f"{result.label:<36} {result.marker_s:8.2f} s to the marker"
        if reference is not None and reference.reached and reference is not result and "-icount" not in result.label:
            text += f", {result.marker_s / reference.marker_s:.1f}x {reference.label}"
    else:
        ended = f"stopped at the {timeout_s:.0f} s timeout" if result.status is None else \
            f"exited with status {result.status} after {result.elapsed_s:.1f} s"
        last = repr(result.last_line) if result.last_line else "none (no console output at all)"
        text = f"{result.label:<36} did not reach the marker: {ended}; last console line: {last}"
    if result.instructions is not None:
        if "-icount" in result.label:
            text += f"; {result.instructions / 1e9:.2f} billion instructions from the kernel's clock start"
        else:
            mips = result.instructions / result.elapsed_s / 1e6 if result.elapsed_s > 0 else 0.0
            text += f"; {result.instructions / 1e9:.3f} billion instructions retired in all ({mips:.1f} MIPS)"
    return text


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="QEMU rounds, best kept (default 3)")
    parser.add_argument("--pyhv-rounds", type=int, default=1, help="pyhv rounds, best kept (default 1)")
    parser.add_argument("--pyhv-timeout", type=float, default=300.0, help="seconds pyhv gets to the marker")
    parser.add_argument("--qemu-timeout", type=float, default=60.0, help="seconds QEMU gets to the marker")
    add_vmm_arguments(parser)
    parser.add_argument("--no-icount", action="store_true", help="skip the QEMU -icount instruction count")
    parser.add_argument("--no-warm", action="store_true",
                        help="skip the pyhv boots with hot-block hints and translated code (one "
                             "boot writes them, then --pyhv-rounds boots read them); plain pyhv "
                             "boots are cold")
    parser.add_argument("--extra-append", default="", metavar="ARGS",
                        help="kernel arguments added to the default command line (e.g. loglevel=7)")
    args = parser.parse_args(argv)
    if " -- " in f" {args.extra_append} ":
        parser.error("--extra-append must not contain ' -- ': the guest command follows it")
    if args.rounds <= 0 or args.pyhv_rounds <= 0:
        parser.error("--rounds and --pyhv-rounds must be positive")
    if args.pyhv_timeout <= 0 or args.qemu_timeout <= 0:
        parser.error("--pyhv-timeout and --qemu-timeout must be positive")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    files = with_extra_arguments(default_boot_files(), args.extra_append)
    print(f"default guest: {files.kernel.name}, {files.initrd}, append {append_for(files, GUEST_COMMAND)!r}",
          file=sys.stderr)
    # (vmm, rounds, timeout, guest command, boot files)
    plan = []
    problems: List[str] = []
    if not args.no_qemu:
        if shutil.which(QEMU_BINARY) is None:
            problems.append(f"{QEMU_BINARY} not found: QEMU skipped")
        else:
            plan.append((qemu_vmm("pc", files), args.rounds, args.qemu_timeout, GUEST_COMMAND, files))
            if not args.no_microvm:
                # microvm has no HPET or PM timer: when calibrating the TSC against the PIT fails
                # under TCG (it did on a loaded machine), the kernel has no clock and hangs.
                microvm_files = with_extra_arguments(files, MICROVM_TSC_ARGUMENT)
                plan.append((qemu_vmm("microvm", microvm_files), args.rounds, args.qemu_timeout,
                             GUEST_COMMAND, microvm_files))
            if not args.no_icount:
                # Counting instructions slows QEMU several times over.
                plan.append((qemu_vmm("pc", files, icount=True), 1, args.qemu_timeout * 5,
                             ICOUNT_COMMAND, files))
    hints_root = Path(tempfile.mkdtemp(prefix="pyhv-boot-hints-"))
    if not args.no_pyhv:
        for number, python in enumerate(chosen_interpreters(args)):
            try:
                cold = pyhv_vmm(python, files)
                plan.append((cold, args.pyhv_rounds, args.pyhv_timeout, GUEST_COMMAND, files))
                if not args.no_warm:
                    # A boot that writes the hot-block hints (PyPy) and the translated code
                    # (both), then boots that start from them.
                    hints = str(hints_root / str(number))
                    plan.append((pyhv_vmm(python, files, hints, ", writing hints"), 1,
                                 args.pyhv_timeout, GUEST_COMMAND, files))
                    plan.append((pyhv_vmm(python, files, hints, ", warm (hints)"), args.pyhv_rounds,
                                 args.pyhv_timeout, GUEST_COMMAND, files))
            except BenchError as err:
                problems.append(f"skipped: {err}")

    results: List[BootResult] = []
    try:
        for vmm, rounds, timeout_s, command, vmm_files in plan:
            print(f"booting under {vmm.label} (timeout {timeout_s:.0f} s) ...", file=sys.stderr, flush=True)
            try:
                results.append(measure(vmm, vmm_files, rounds, timeout_s, command))
            except BenchError as err:
                problems.append(f"failed: {err}")
    finally:
        shutil.rmtree(hints_root, ignore_errors=True)
    reference = next((r for r in results if r.label == "qemu tcg -M pc" and r.reached), None)
    timeouts = {vmm.label: timeout_s for vmm, _, timeout_s, _, _ in plan}
    rounds = [f"best of {args.rounds} for QEMU"] if not args.no_qemu else []
    rounds += [f"best of {args.pyhv_rounds} for pyhv"] if not args.no_pyhv else []
    print(f"time to '{MARKER}' ({', '.join(rounds)}), VMM start-up included; {host_summary()}")
    for result in results:
        print(describe(result, reference, timeouts[result.label]))
    for problem in problems:
        print(problem)
    if args.json:
        args.json.write_text(json.dumps(
            {"marker": MARKER, "append": append_for(files, GUEST_COMMAND),
             "results": [dict(r._asdict(), reached=r.reached) for r in results], "problems": problems},
            indent=2,
        ))
    return 0 if reference is not None and not any(p.startswith("failed") for p in problems) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""MIPS of the software CPU on real kernel code: the default guest's boot, cut at N instructions.

    python bench/tcg_kernel.py [--million N] [--until TEXT] [--hot K] [--cprofile FILE]
                               [--translate-after T] [--serial SPEC] [--hints DIR]
                               [--guest-profile KALLSYMS [--guest-callers K]]

Boots the default guest (``pyhv guest build``: the Debian kernel and busybox initramfs) under
``-accel tcg -icount shift=auto,sleep=off -seed 1`` (virtual time from the instruction count
and a fixed boot RNG seed, so runs retire nearly the same instructions: within 0.02%) with the
accelerator's own run loop, and stops
after N million guest instructions, at shutdown, or (``--until``) once the console has
printed TEXT, e.g. ``--until "Run /init"``. It prints instructions retired, wall and
CPU time, MIPS, the time spent translating, the hottest translated blocks and the
instructions that still fall back to the interpreter inside translated blocks (weighted by
how often their block ran). Run it under CPython and PyPy; on PyPy,
``PYPYLOG=jit-summary:FILE`` adds the JIT's own view. ``--guest-profile`` samples the guest's
RIP and names the guest functions the boot's CPU time goes to (bench/_guestprof.py).

Measured 2026-11-25 on the shared 2-core machine (CPU seconds; the same deterministic work):
    first 150M instructions, PyPy:   86.0 s (1.74 MIPS) before the changes of that day,
                                     57.3 s (2.62 MIPS) after (bulk rep stos/movs, threshold 32,
                                     jump cache, blocks through direct jmp/call, more emitters)
    first 30M instructions, CPython: 11.4 s (2.62 MIPS) before, 6.95 s (4.32 MIPS) after
    first 60M instructions, later that day: PyPy 19.1 s -> 13.1 s (residual calls, chains
                                     kept with IF clear), CPython 13.0 s -> 11.15 s
    registers in the signed form (kernel addresses stay machine integers on PyPy) and block
    globals in a module dict: first 60M, PyPy 13.1 s -> 10.1 s (5.9 MIPS)
    2026-11-26, RIP, RFLAGS and immediates kept machine words on PyPy, not long integers of
    small value (bench/README.md, boot.py): whole boot 41.7 s -> 30.2 s (three pairs side by side)
What is left, from the profiles: a call among thousands of block functions costs about
0.3 us on PyPy (each enters its own JIT entry bridge), and kernel blocks are short (6
instructions a run).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections import Counter
from typing import Dict, List, Optional, Tuple

from _guestprof import GuestProfiler, Symbols
from pyhv.accel.tcg.state import unsigned64
from pyhv.accel.tcg.translate import BlockProfile
from pyhv.guestimage.default import DEFAULT_CMDLINE, build_default_guest
from pyhv.machine import Machine
from pyhv.qemu_args import parse_run_args
from pyhv.runtime_env import ON_PYPY, restart_with_vm_env

# The default guest's own command line, as bench/boot.py boots it. (Figures above from before
# 2026-11-26 used "console=ttyS0 panic=-1 cryptomgr.notests": without quiet and no_timer_check,
# about 20 million more instructions, in the kernel's timer check and console output.)
CMDLINE = DEFAULT_CMDLINE + " -- uname -r"


def _console_has(path: str, marker: bytes) -> bool:
    with open(path, "rb") as stream:
        return marker in stream.read()


def boot(budget: int, serial: str, translate_after: int, profiles: List[BlockProfile],
         cprofile: str, until: str = "", guest_profiler: Optional[GuestProfiler] = None,
         ) -> Tuple[int, float, float, str, object]:
    console = ""
    if until:
        handle, console = tempfile.mkstemp(prefix="tcg-kernel-console-")
        os.close(handle)
        serial = f"file:{console}"
    guest = build_default_guest()
    config = parse_run_args([
        "-accel", "tcg", "-icount", "shift=auto,sleep=off", "-seed", "1", "-m", "256", "-no-reboot",
        "-serial", serial,
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", CMDLINE])
    machine = Machine(config)
    accel = machine.accel
    cpu = accel.cpu
    cpu.translate_after = translate_after
    cpu.translator.profiles = profiles
    lifecycle = machine.lifecycle
    run_slice = cpu.run
    outcome = {"stop": "budget"}
    slices = [0]

    def budgeted_slice(max_instructions: int, whole_blocks: bool = False):
        # The accelerator's own loop (instruction clock, timers, interrupts) drives the CPU;
        # this stops it at the budget or the console marker.
        result = run_slice(min(max_instructions, max(1, budget - cpu.instructions_retired)), whole_blocks)
        slices[0] += 1
        if cpu.instructions_retired >= budget:
            lifecycle.shutdown(0, "bench: instruction budget reached")
        elif console and slices[0] % 500 == 0 and _console_has(console, until.encode()):
            outcome["stop"] = f"console printed {until!r}"
            lifecycle.shutdown(0, "bench: console marker")
        return result

    cpu.run = budgeted_slice
    profiler = None
    if cprofile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    wall, cpu_time = time.perf_counter(), time.process_time()
    if guest_profiler is not None:
        guest_profiler.start(cpu)
    try:
        stop_request = accel.run()
        if "bench:" not in str(stop_request):
            outcome["stop"] = str(stop_request)
    finally:
        wall, cpu_time = time.perf_counter() - wall, time.process_time() - cpu_time
        if guest_profiler is not None:
            guest_profiler.stop()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(cprofile)
        machine.close()
        if console:
            os.unlink(console)
    stop = outcome["stop"]
    return cpu.instructions_retired, wall, cpu_time, stop, cpu


def _name(insn) -> str:
    spec = insn.spec.name if insn.spec is not None else "?"
    return f"{spec} ({insn.handler.__name__}, op {insn.op:#x}/{insn.raw_reg})"


def report(profiles: List[BlockProfile], retired: int, hot: int) -> None:
    in_blocks = sum(p.retired for p in profiles)
    runs = sum(p.runs for p in profiles)
    print(f"translated block runs: {runs:,} ({in_blocks / max(runs, 1):.1f} instructions per run)")
    print(f"instructions retired in translated blocks: {in_blocks:,} "
          f"({100.0 * in_blocks / max(retired, 1):.1f}% of retired; the interpreter ran the rest)")
    fallback: Dict[str, int] = Counter()
    for p in profiles:
        for insn in p.fallbacks:
            fallback[_name(insn)] += p.runs
    total_fallback = sum(fallback.values())
    print(f"fallback instructions run inside translated blocks: {total_fallback:,}")
    for name, count in sorted(fallback.items(), key=lambda item: -item[1])[:hot]:
        print(f"  {count:>12,}  {name}")
    print(f"hottest blocks (by instructions retired; runs x length):")
    ranked = sorted(profiles, key=lambda p: -p.retired)
    for p in ranked[:hot]:
        first = p.insns[0]
        names = " ; ".join(i.spec.name if i.spec is not None else "?" for i in p.insns[:8])
        more = " ..." if len(p.insns) > 8 else ""
        print(f"  {p.retired:>12,}  {p.runs:>10,} x {len(p.insns):>3}  {unsigned64(first.addr):#x}  "
              f"fallbacks={len(p.fallbacks)}  {names}{more}")


def main() -> None:
    # As `pyhv run` runs: with PyPy's GC settings (pyhv/runtime_env.py), read at start-up only.
    restart_with_vm_env([sys.executable] + sys.argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", type=float, default=20.0, help="guest instructions, in millions")
    parser.add_argument("--serial", default="null", help="the guest console (QEMU -serial syntax)")
    parser.add_argument("--until", default="", help="stop once the console printed this text")
    parser.add_argument("--hot", type=int, default=15, help="rows in the hot-block and fallback tables")
    parser.add_argument("--translate-after", type=int, default=None,
                        help="interpreted runs before a block is translated (default: the CPU's)")
    parser.add_argument("--cprofile", default="", help="write cProfile stats of the run to this file")
    parser.add_argument("--no-block-profile", action="store_true",
                        help="do not count block runs and what they retire (the counting wrapper "
                             "around each block function costs time: a PyPy boot took 131 s with "
                             "it against 75-86 s without)")
    parser.add_argument("--hints", default="off", metavar="DIR",
                        help="keep the software CPU's hot-block hints in DIR (a second run then "
                             "starts warm); default: off, every run starts cold")
    parser.add_argument("--guest-profile", default="", metavar="KALLSYMS",
                        help="sample the guest's RIP every 2 ms of CPU time and report by guest "
                             "function, named from this /proc/kallsyms dump of the guest kernel")
    parser.add_argument("--guest-callers", type=int, default=0, metavar="K",
                        help="with --guest-profile: the commonest callers (from a guest stack "
                             "scan) of the K most sampled functions")
    args = parser.parse_args()
    os.environ["PYHV_TCG_HINTS"] = args.hints
    symbols = guest_profiler = None
    if args.guest_profile:
        try:
            with open(args.guest_profile, errors="replace") as stream:
                symbols = Symbols.parse(stream.read())
        except (OSError, ValueError) as err:
            parser.error(f"--guest-profile {args.guest_profile}: {err}")
        guest_profiler = GuestProfiler(stack_qwords=64 if args.guest_callers else 0)
    from pyhv.accel.tcg.cpu import TRANSLATE_AFTER
    after = TRANSLATE_AFTER if args.translate_after is None else args.translate_after
    profiles: List[BlockProfile] = []
    retired, wall, cpu_time, stop, cpu = boot(
        int(args.million * 1e6), args.serial, after, None if args.no_block_profile else profiles,
        args.cprofile, args.until, guest_profiler)
    name = sys.implementation.name
    translator = cpu.translator
    print(f"{name}: {retired:,} instructions ({stop}), wall {wall:.2f} s, cpu {cpu_time:.2f} s, "
          f"{retired / cpu_time / 1e6:.2f} MIPS (cpu time)")
    seconds = getattr(translator, "seconds", float("nan"))
    print(f"blocks translated: {translator.translated:,} in {seconds:.2f} s "
          f"({1000 * seconds / max(translator.translated, 1):.2f} ms each); "
          f"blocks decoded: {len(cpu.blocks):,}; translate after {after} runs")
    if ON_PYPY:  # the collector's share of the CPU time above
        stats = gc.get_stats()
        print(f"PyPy GC: {stats.total_gc_time / 1000:.2f} s collecting, peak memory {stats.peak_memory}, "
              f"JIT code {stats.jit_backend_used}")
    if cpu.hints is not None:
        print(f"hot-block hints: {len(cpu.hints.noted):,} noted, {cpu.hints.loaded:,} read from {cpu.hints.path}")
    code_cache = cpu.translator.code_cache
    if code_cache is not None:
        print(f"translated code: {code_cache.hits:,} blocks loaded from {code_cache.path}, "
              f"{code_cache.compiled:,} compiled")
    if profiles:
        report(profiles, retired, args.hot)
    if guest_profiler is not None:
        print("\n".join(guest_profiler.report(symbols, args.hot, args.guest_callers)))


if __name__ == "__main__":
    main()

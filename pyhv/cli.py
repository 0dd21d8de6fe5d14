"""The `pyhv` command: `pyhv run` (QEMU syntax), `pyhv guest`, `pyhv img`.

Every error a user can cause prints one line, ``pyhv: ...``, and exits non-zero; tracebacks
are for bugs.
"""

from __future__ import annotations

import signal
import sys
from typing import Callable, Dict, List, Optional, Tuple

from . import __version__
from .block.overlay import remove_overlays
from .chardev import CharBackend
from .daemonize import Daemon, check_daemonizable
from .devices.debug_exit import SHUTDOWN_REASON_PREFIX as DEBUG_EXIT_REASON
from .devices.pvpanic import PANIC_EXIT_STATUS
from .devices.pvpanic import PANIC_REASON as GUEST_PANIC_REASON
from .errors import ConfigError, PyhvError, VmFatalError
from .lifecycle import Reset, Shutdown, StopRequest
from .panic_watch import panic_message
from .pidfile import PidFile
from .qmp.control import QMP_RESET_REASON, QUIT_REASON
from .qmp.monitors import SIGNAL_REASON, Monitors, stop_events
from .runtime_env import pyhv_argv, restart_with_vm_env

EXIT_ERROR = 1
# Signals that end the VM; the input threads must not swallow them (see _block_signals).
TERMINATING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_command(argv: List[str]) -> int:
    from .qemu_args import parse_run_args, usage

    if any(a in ("-h", "-help", "--help") for a in argv):
        print(usage())
        return 0
    return run_config(parse_run_args(argv))[0]


def run_config(config) -> Tuple[int, Optional[StopRequest]]:
    """Run the machine ``config`` describes; its exit status and the request that ended it."""
    kept_chardevs: Dict[str, CharBackend] = {}  # file and socket back-ends live across resets
    kept_overlays: Dict[str, str] = {}  # and so do -snapshot's overlays, deleted at the end
    monitors = Monitors({*TERMINATING_SIGNALS, signal.SIGUSR1})
    daemon = Daemon()
    if config.daemonize:
        check_daemonizable(config.serial, list(config.chardevs.values()))
        daemon.detach()  # before any thread or file of the VM: the child runs it
    pidfile = PidFile(config.pidfile) if config.pidfile else None
    try:
        return _run_until_stop(config, kept_chardevs, kept_overlays, monitors, daemon.started)
    finally:
        if pidfile is not None:
            pidfile.close()
        monitors.close()
        for backend in kept_chardevs.values():
            backend.close()
        remove_overlays(kept_overlays.values())


def _run_until_stop(config, kept_chardevs, kept_overlays, monitors: Monitors,
                    started: Callable[[], None]) -> Tuple[int, Optional[StopRequest]]:
    """Build and run the machine until it stops for good; ``started`` is called each time
    a machine is about to run (-daemonize's parent returns at the first)."""
    from .machine import Machine

    while True:
        # Threads started while building the machine inherit this mask, so terminating
        # signals reach the vCPU (main) thread and interrupt KVM_RUN.
        blocked = {*TERMINATING_SIGNALS, signal.SIGUSR1}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            machine = Machine(config, kept_chardevs=kept_chardevs, kept_overlays=kept_overlays)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        previous = {}
        try:
            # The monitors open once the first machine is built (QEMU, too, answers only then):
            # a client that connects at once finds a machine to act on.
            monitors.attach(machine, config)
            started()
            previous = _on_terminating_signals(
                lambda signum: machine.lifecycle.shutdown(0, f"{SIGNAL_REASON} {signum}"))
            stop = machine.run()
        finally:
            _restore_handlers(previous)
            monitors.attach(None, config)
            machine.close()
        control = monitors.control
        panic = machine.lifecycle.guest_panic
        monitors.emit(stop_events(stop, panic, not config.no_reboot))
        if isinstance(stop, Shutdown):
            if stop.reason.startswith(GUEST_PANIC_REASON):
                print(f"pyhv: {panic_message(panic)}", file=sys.stderr)
            elif stop.reason.startswith(SIGNAL_REASON):
                print(f"pyhv: {stop.reason}", file=sys.stderr)
            elif control is not None and control.reboot_on_poweroff and stop.reason != QUIT_REASON:
                # x-guest-reboot: the guest powered off when asked to; boot it again.
                control.reboot_on_poweroff = False
                monitors.emit([("RESET", {"guest": False, "reason": QMP_RESET_REASON})])
                continue
            return stop.status, stop
        if isinstance(stop, Reset) and config.no_reboot:
            if panic is not None:
                print(f"pyhv: {panic_message(panic)} (seen on the serial console; the guest then reset)",
                      file=sys.stderr)
                return PANIC_EXIT_STATUS, stop
            return 0, stop
        if panic is not None:
            print(f"pyhv: {panic_message(panic)}; booting it again (-no-reboot ends the VM instead)",
                  file=sys.stderr)
        # A reset without -no-reboot: build the machine again and boot from scratch.


def _on_terminating_signals(callback: Callable[[int], None]) -> Dict[int, object]:
    previous = {}
    for signum in TERMINATING_SIGNALS:
        previous[signum] = signal.signal(signum, lambda num, _frame: callback(num))
    return previous


def _restore_handlers(previous: Dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def guest_command(argv: List[str]) -> int:
    from .guestimage import main as guest_main

    if argv and argv[0] == "run":
        return guest_run(argv[1:])
    return guest_main(argv)


# What `pyhv guest run` gives the default guest before the user's own options (which win).
GUEST_RUN_DEFAULTS = ["-accel", "kvm:tcg", "-m", "256", "-nographic", "-no-reboot",
                      "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
# The kernel passes each word after `--` to init as an argument and panics past this many.
MAX_INIT_ARGS = 32


def _init_command(text: str) -> str:
    """``text`` as the default guest's /init reads it: in double quotes, one init argument."""
    if '"' not in text:
        return f'"{text}"'
    words = len(text.split())
    if words >= MAX_INIT_ARGS:
        raise ConfigError(f"the guest command has {words} words and double quotes; the kernel "
                          f"refuses more than {MAX_INIT_ARGS} init arguments: drop the quotes or "
                          "put the command in a script")
    return text


def _take_append(options: List[str]) -> Tuple[List[str], List[str]]:
    """``options`` without their -append options, and those options' texts.

    In ``pyhv guest run`` an -append adds to the default guest's command line rather than
    replacing it: replaced, the guest would lose its console and the command after ``--``,
    and a user asking for ``loglevel=7`` would get a VM that runs silently forever."""
    kept: List[str] = []
    texts: List[str] = []
    i = 0
    while i < len(options):
        name, eq, inline = options[i].lstrip("-").partition("=")
        if options[i].startswith("-") and name == "append":
            if eq:
                texts.append(inline)
            elif i + 1 < len(options):
                i += 1
                texts.append(options[i])
            else:
                raise ConfigError(f"option '{options[i]}' needs a value")
        else:
            kept.append(options[i])
        i += 1
    return kept, [text for text in texts if text.strip()]


def guest_run(argv: List[str]) -> int:
    """``pyhv guest run [RUN OPTIONS] [-- COMMAND]``: boot the default guest (built and cached
    on first use); with a command, run it in the guest and exit with its status, else give
    the guest's shell on the console. An -append adds to the guest's command line."""
    from .guestimage import build_default_guest
    from .qemu_args import parse_run_args

    options, command = argv, []
    if "--" in argv:
        split = argv.index("--")
        options, command = argv[:split], argv[split + 1:]
    options, extra_append = _take_append(options)
    guest = build_default_guest()
    append = " ".join([guest.cmdline] + extra_append)
    if command:
        append += " -- " + _init_command(" ".join(command))
    config = parse_run_args(GUEST_RUN_DEFAULTS + ["-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
                                                  "-append", append] + options)
    status, stop = run_config(config)
    if isinstance(stop, Shutdown) and stop.reason.startswith(DEBUG_EXIT_REASON):
        # /init reports the command's status s through isa-debug-exit, which exits (s << 1) | 1.
        return status >> 1
    return status


def img_command(argv: List[str]) -> int:
    from .block.cli import main as img_main

    return img_main(argv)


def virsh_command(argv: List[str]) -> int:
    from .virt.virsh import main as virsh_main

    return virsh_main(argv)


COMMANDS: Dict[str, Callable[[List[str]], int]] = {
    "run": run_command,
    "guest": guest_command,
    "img": img_command,
    "virsh": virsh_command,
}

USAGE = """usage: pyhv COMMAND [ARGS]

commands:
  run    run a VM; options use qemu-system-x86_64's syntax (pyhv run -help)
  guest  build, locate or boot the default Debian guest (pyhv guest build|path|clean|run)
  img    create, inspect and convert disk images, like qemu-img (pyhv img --help)
  virsh  define, start and control domains (libvirt-style XML), like virsh (pyhv virsh help)
"""


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"pyhv {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"pyhv: unknown command '{args[0]}' (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    if argv is None and (args[0] == "run" or args[:2] == ["guest", "run"]):
        # The process is pyhv itself (not a caller passing argv): PyPy's GC and malloc settings
        # (runtime_env.py) may need a restart; this returns once they are set.
        restart_with_vm_env(pyhv_argv(args))
    try:
        return command(args[1:])
    except VmFatalError as err:
        print(f"pyhv: guest stopped: {err}", file=sys.stderr)
        return EXIT_ERROR
    except PyhvError as err:
        print(f"pyhv: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pyhv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

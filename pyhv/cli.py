"""The `pyhv` command: `pyhv run` (QEMU syntax), `pyhv guest`, `pyhv img`.

Every error a user can cause prints one line, ``pyhv: ...``, and exits non-zero; tracebacks
are for bugs.
"""

from __future__ import annotations

import signal
import sys
from typing import Callable, Dict, List, Optional

from . import __version__
from .devices.pvpanic import PANIC_REASON as GUEST_PANIC_REASON
from .errors import PyhvError, VmFatalError
from .lifecycle import Reset, Shutdown

EXIT_ERROR = 1
# Signals that end the VM; the input threads must not swallow them (see _block_signals).
TERMINATING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_command(argv: List[str]) -> int:
    from .machine import Machine
    from .qemu_args import parse_run_args, usage

    if any(a in ("-h", "-help", "--help") for a in argv):
        print(usage())
        return 0
    config = parse_run_args(argv)
    while True:
        # Threads started while building the machine inherit this mask, so terminating
        # signals reach the vCPU (main) thread and interrupt KVM_RUN.
        blocked = {*TERMINATING_SIGNALS, signal.SIGUSR1}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            machine = Machine(config)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        previous = _on_terminating_signals(
            lambda signum: machine.lifecycle.shutdown(0, f"terminating on signal {signum}"))
        try:
            stop = machine.run()
        finally:
            _restore_handlers(previous)
            machine.close()
        if isinstance(stop, Shutdown):
            if stop.reason.startswith("terminating on signal") or stop.reason == GUEST_PANIC_REASON:
                print(f"pyhv: {stop.reason}", file=sys.stderr)
            return stop.status
        if isinstance(stop, Reset) and config.no_reboot:
            return 0
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

    return guest_main(argv)


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
  guest  build or locate the default Debian guest (pyhv guest build|path|clean)
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

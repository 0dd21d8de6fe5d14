"""The VM process of a domain: the machine of `pyhv run`, a QMP monitor, and a status file.

`pyhv virsh start` launches ``python -m pyhv.virt.runner --config-dir C --runtime-dir R
--log-dir L --id N NAME`` detached, with stdout and stderr in the domain's log. The process
serves the serial console on a unix socket, answers QMP on ``RUNTIME/NAME.monitor``, and
acts on stop requests as the domain's ``on_poweroff``/``on_reboot``/``on_crash`` say.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..block.overlay import remove_overlays
from ..chardev import CharBackend
from ..config import QmpSocketSpec
from ..devices.pvpanic import PANIC_REASON as GUEST_PANIC_REASON
from ..errors import PyhvError, VmFatalError
from ..lifecycle import Reset, Shutdown, StopRequest
from ..panic_watch import panic_message
from ..qmp.control import QMP_RESET_REASON, QUIT_REASON, MachineControl
from ..qmp.monitors import Monitors
from .domain import DomainConfig
from .domain_ifaces import DomainInterfaces
from .domain_xml import domain_to_xml, effective_serials
from .machine_config import to_machine_config
from .state import DomainStatus, cleanup_runtime, write_status
from .store import Store

TERMINATING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
BLOCKED_WHILE_BUILDING = (*TERMINATING_SIGNALS, signal.SIGUSR1)
SIGNAL_REASON = "host-signal"


def console_paths(store: Store, dom: DomainConfig) -> List[str]:
    """Where serial port i is served: its own unix path, else RUNTIME/NAME.console (port 0)."""
    paths = []
    for index, serial in enumerate(effective_serials(dom)):
        if serial.type == "unix" and serial.path:
            paths.append(serial.path)
        elif index == 0:
            paths.append(str(store.runtime_path(dom.name, "console")))
        else:
            paths.append(str(store.runtime_path(dom.name, f"serial{index}")))
    return paths


class DomainRunner(MachineControl):
    """Runs one domain until it ends; the VmControl the QMP monitor acts through."""

    def __init__(self, store: Store, dom: DomainConfig, domain_id: int) -> None:
        super().__init__(dom.name)
        self.store = store
        self.dom = dom
        self.domain_id = domain_id
        self.consoles = console_paths(store, dom)
        self.config = to_machine_config(dom, self.consoles)
        self.live_xml = domain_to_xml(dom, domain_id, self.consoles[0] if self.consoles else None)
        self.monitors = Monitors(set(BLOCKED_WHILE_BUILDING), control=self)
        self.interfaces: Optional[DomainInterfaces] = None  # TAP devices, passt: made in run()
        # The console sockets and log files, kept across reboots: a console stays attached.
        self.kept_chardevs: Dict[str, CharBackend] = {}
        # And the overlays of <transient/> disks: the guest's writes outlive a reboot, not the
        # domain (libvirt's meaning); deleted when it shuts off.
        self.kept_overlays: Dict[str, str] = {}

    def paused_changed(self, state: str, reason: str) -> None:
        self._write_status(state, reason)

    # --- running ---------------------------------------------------------------------------
    def _write_status(self, state: str, reason: str) -> None:
        pid = os.getpid() if state != "shutoff" else None
        domain_id = self.domain_id if state != "shutoff" else None
        live = self.live_xml if state != "shutoff" else None
        write_status(self.store, self.dom.name, DomainStatus(state, reason, pid, domain_id, live))

    def _emit(self, event: str, data: Dict[str, object]) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} event {event} {data}", file=sys.stderr, flush=True)
        self.monitors.emit([(event, data)])

    def _build(self):
        from ..machine import Machine

        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_WHILE_BUILDING)
        try:
            self.config.netdevs = self.interfaces.netdevs() if self.interfaces is not None else []
            return Machine(self.config, kept_chardevs=self.kept_chardevs, kept_overlays=self.kept_overlays)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def run(self) -> int:
        self.store.runtime_path(self.dom.name, "pid").write_text(f"{os.getpid()}\n")
        self.monitors.listen([QmpSocketSpec(str(self.store.runtime_path(self.dom.name, "monitor")), wait=False)])
        for signum in TERMINATING_SIGNALS:
            signal.signal(signum, self._on_signal)
        final_reason = "failed"
        try:
            self.interfaces = DomainInterfaces.open(self.store, self.dom)
            self.live_xml = domain_to_xml(self.interfaces.live_domain(self.dom), self.domain_id,
                                          self.consoles[0] if self.consoles else None)
            self.machine = self._build()
            self._write_status("running", "booted")
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} domain {self.dom.name} started (id {self.domain_id},"
                  f" pid {os.getpid()})", file=sys.stderr, flush=True)
            while True:
                action, final_reason = self._run_once()
                if action == "stop":
                    return 0
                self.machine = self._build()
                self._write_status("running", "booted")
        finally:
            machine = self.machine
            self.finish()
            if machine is not None:
                machine.close()
            for backend in self.kept_chardevs.values():
                backend.close()
            remove_overlays(self.kept_overlays.values())
            if self.interfaces is not None:
                self.interfaces.close()
            self._write_status("shutoff", final_reason)
            self.monitors.close()
            cleanup_runtime(self.store, self.dom.name)
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} domain {self.dom.name} shut off ({final_reason})",
                  file=sys.stderr, flush=True)

    def _on_signal(self, signum: int, _frame) -> None:
        machine = self.machine
        if machine is not None:
            machine.lifecycle.shutdown(0, SIGNAL_REASON)
        else:
            raise SystemExit(f"pyhv: terminating on signal {signum}")

    def _run_once(self) -> Tuple[str, str]:
        """Run the machine once; ("stop", reason) or ("restart", reason)."""
        machine = self.machine
        try:
            stop: StopRequest = machine.run()
        except VmFatalError as err:
            print(f"pyhv: guest crashed: {err}", file=sys.stderr, flush=True)
            machine.close()
            self.machine = None
            return self._crashed()
        machine.close()
        self.machine = None
        return self._after(stop, machine.lifecycle.guest_panic)

    def _crashed(self) -> Tuple[str, str]:
        return ("restart" if self.dom.on_crash == "restart" else "stop"), "crashed"

    def _after(self, stop: StopRequest, panic: Optional[str] = None) -> Tuple[str, str]:
        """What the domain does after ``stop``; ``panic``: the reason of a kernel panic the
        guest printed on its console before it (see pyhv.panic_watch)."""
        # A kernel panic is a crash, as libvirt takes QEMU's pvpanic: on_crash decides, whether
        # the pvpanic device ended the machine or the kernel reset it after saying so.
        if ((isinstance(stop, Shutdown) and stop.reason.startswith(GUEST_PANIC_REASON))
                or (isinstance(stop, Reset) and panic is not None)):
            print(f"pyhv: {panic_message(panic)}", file=sys.stderr, flush=True)
            self._emit("GUEST_PANICKED", {"action": "run" if self.dom.on_crash == "restart" else "poweroff"})
            return self._crashed()
        if isinstance(stop, Shutdown):
            if stop.reason in (QUIT_REASON, SIGNAL_REASON):
                self._emit("SHUTDOWN", {"guest": False, "reason": stop.reason})
                return "stop", "destroyed"
            self._emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
            if self.reboot_on_poweroff:
                self.reboot_on_poweroff = False
                self._emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
                return "restart", "booted"
            return ("restart" if self.dom.on_poweroff == "restart" else "stop"), "shutdown"
        assert isinstance(stop, Reset)
        if stop.reason == QMP_RESET_REASON:
            self._emit("RESET", {"guest": False, "reason": QMP_RESET_REASON})
            return "restart", "booted"
        self._emit("RESET", {"guest": True, "reason": "guest-reset"})
        if self.dom.on_reboot == "destroy":
            self._emit("SHUTDOWN", {"guest": True, "reason": "guest-reset"})
            return "stop", "shutdown"
        return "restart", "booted"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyhv.virt.runner")
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--runtime-dir", required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("name")
    args = parser.parse_args(argv)
    store = Store(Path(args.config_dir), Path(args.runtime_dir), Path(args.log_dir))
    try:
        dom = store.load(args.name)
        return DomainRunner(store, dom, args.id).run()
    except PyhvError as err:
        print(f"pyhv: {err}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The QMP commands pyhv answers, acting on a VM through a small control interface.

Each command is a function ``(monitor, arguments) -> return value``, found in one table;
errors are :class:`QmpError` with QEMU's error classes, which the server turns into
``{"error": {"class": ..., "desc": ...}}``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from .. import __version__
from ..errors import PyhvError

from typing import Protocol

# The QEMU release whose QMP schema these commands follow (the Debian peer on these machines).
QEMU_VERSION = {"major": 7, "minor": 2, "micro": 0}

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"


class QmpError(PyhvError):
    """A command failed; ``error_class`` is one of QEMU's (GenericError, CommandNotFound...)."""

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


class VmControl(Protocol):
    """What the monitor may ask of the VM process (implemented by pyhv.qmp.control)."""

    name: Optional[str]

    def status(self) -> str:
        """QMP's RunState name: running, paused, shutdown, ..."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def powerdown(self) -> None:
        """Press the ACPI power button; QmpError when the machine has none."""

    def reset(self) -> None: ...

    def reboot(self) -> None:
        """Ask the guest to reboot: press the power button and restart it once it powers off."""

    def quit(self) -> None: ...

    def registers(self) -> Dict[str, int]: ...

    def vcpu_thread_id(self) -> int: ...


Emit = Callable[[str, Dict[str, Any]], None]
Command = Callable[["Monitor", Dict[str, Any]], Any]


class Monitor:
    """Runs commands against one VM; ``emit(event, data)`` sends an event to every client."""

    def __init__(self, control: VmControl, emit: Emit) -> None:
        self.control = control
        self.emit = emit

    def execute(self, name: str, arguments: Dict[str, Any]) -> Any:
        command = COMMANDS.get(name)
        if command is None:
            raise QmpError(COMMAND_NOT_FOUND, f"The command {name} has not been found")
        if not isinstance(arguments, dict):
            raise QmpError(GENERIC_ERROR, "QMP input member 'arguments' must be an object")
        return command(self, arguments)


def _no_arguments(arguments: Dict[str, Any]) -> None:
    if arguments:
        raise QmpError(GENERIC_ERROR, f"Parameter '{next(iter(arguments))}' is unexpected")


def query_version(_m: Monitor, arguments: Dict[str, Any]) -> Any:
    _no_arguments(arguments)
    return {"qemu": dict(QEMU_VERSION), "package": f"pyhv {__version__}"}


def query_commands(_m: Monitor, arguments: Dict[str, Any]) -> Any:
    _no_arguments(arguments)
    return [{"name": name} for name in sorted(list(COMMANDS) + ["qmp_capabilities"])]


def query_status(m: Monitor, arguments: Dict[str, Any]) -> Any:
    _no_arguments(arguments)
    status = m.control.status()
    return {"status": status, "singlestep": False, "running": status == "running"}


def query_name(m: Monitor, arguments: Dict[str, Any]) -> Any:
    _no_arguments(arguments)
    return {"name": m.control.name} if m.control.name else {}


def query_cpus_fast(m: Monitor, arguments: Dict[str, Any]) -> Any:
    _no_arguments(arguments)
    return [{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": m.control.vcpu_thread_id(),
             "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "target": "x86_64"}]


def stop(m: Monitor, arguments: Dict[str, Any]) -> Any:
    _no_arguments(arguments)
    if m.control.status() != "paused":
        m.control.pause()
        m.emit("STOP", {})
    return {}


def cont(m: Monitor, arguments: Dict[str, Any]) -> Any:
    _no_arguments(arguments)
    if m.control.status() == "paused":
        m.control.resume()
        m.emit("RESUME", {})
    return {}


def system_powerdown(m: Monitor, arguments: Dict[str, Any]) -> Any:
    _no_arguments(arguments)
    m.control.powerdown()
    m.emit("POWERDOWN", {})
    return {}


def system_reset(m: Monitor, arguments: Dict[str, Any]) -> Any:
    _no_arguments(arguments)
    m.control.reset()
    return {}


def guest_reboot(m: Monitor, arguments: Dict[str, Any]) -> Any:
    """x-guest-reboot (pyhv's): libvirt's ACPI reboot in one command. libvirt does it on
    QEMU with -no-shutdown, system_powerdown, then system_reset and cont on the SHUTDOWN
    event; here the domain process restarts the machine itself when the guest powers off."""
    _no_arguments(arguments)
    m.control.reboot()
    m.emit("POWERDOWN", {})
    return {}


def quit_(m: Monitor, arguments: Dict[str, Any]) -> Any:
    _no_arguments(arguments)
    m.control.quit()
    return {}


def human_monitor_command(m: Monitor, arguments: Dict[str, Any]) -> Any:
    line = arguments.get("command-line")
    extra = set(arguments) - {"command-line", "cpu-index"}
    if extra:
        raise QmpError(GENERIC_ERROR, f"Parameter '{extra.pop()}' is unexpected")
    if not isinstance(line, str):
        raise QmpError(GENERIC_ERROR, "Parameter 'command-line' is missing")
    words = line.split()
    if words[:2] == ["info", "status"]:
        return f"VM status: {m.control.status()}\r\n"
    if words[:2] == ["info", "registers"]:
        return format_registers(m.control.registers())
    if words[:1] == ["info"] and len(words) > 1:
        return f"unknown info command: '{words[1]}' (pyhv knows info status, info registers)\r\n"
    return f"unknown command: '{line}' (pyhv knows info status, info registers)\r\n"


def format_registers(regs: Dict[str, int]) -> str:
    """Registers in the layout of QEMU's ``info registers`` (x86-64)."""
    def row(names: List[str]) -> str:
        return " ".join(f"{label}={regs.get(name, 0):016x}" for label, name in names)

    lines = [
        row([("RAX", "rax"), ("RBX", "rbx"), ("RCX", "rcx"), ("RDX", "rdx")]),
        row([("RSI", "rsi"), ("RDI", "rdi"), ("RBP", "rbp"), ("RSP", "rsp")]),
        row([("R8 ", "r8"), ("R9 ", "r9"), ("R10", "r10"), ("R11", "r11")]),
        row([("R12", "r12"), ("R13", "r13"), ("R14", "r14"), ("R15", "r15")]),
        f"RIP={regs.get('rip', 0):016x} RFL={regs.get('rflags', 0):08x}",
    ]
    for seg in ("es", "cs", "ss", "ds", "fs", "gs"):
        lines.append(f"{seg.upper():<3}={regs.get(seg, 0):04x}")
    lines.append(f"GDT=     {regs.get('gdt_base', 0):016x} {regs.get('gdt_limit', 0):08x}")
    lines.append(f"IDT=     {regs.get('idt_base', 0):016x} {regs.get('idt_limit', 0):08x}")
    lines.append(f"CR0={regs.get('cr0', 0):08x} CR2={regs.get('cr2', 0):016x} "
                 f"CR3={regs.get('cr3', 0):016x} CR4={regs.get('cr4', 0):08x}")
    lines.append(f"EFER={regs.get('efer', 0):016x}")
    return "\r\n".join(lines) + "\r\n"


COMMANDS: Dict[str, Command] = {
    "query-version": query_version,
    "query-commands": query_commands,
    "query-status": query_status,
    "query-name": query_name,
    "query-cpus-fast": query_cpus_fast,
    "stop": stop,
    "cont": cont,
    "system_powerdown": system_powerdown,
    "system_reset": system_reset,
    "x-guest-reboot": guest_reboot,
    "quit": quit_,
    "human-monitor-command": human_monitor_command,
}

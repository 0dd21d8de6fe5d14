"""Starting and destroying domain processes, under the domain lock so no domain starts twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Optional

from .machine_config import to_machine_config
from .runner import console_paths
from ..runtime_env import vm_env
from .state import RUNNER_MODULE, DomainStatus, cleanup_runtime, process_alive, read_status, settle, write_status
from .store import Store, StoreError

START_TIMEOUT_S = 60.0
DESTROY_GRACE_S = 0.5
POLL_S = 0.02
LOG_TAIL_BYTES = 2000


def start(store: Store, name: str) -> DomainStatus:
    """Launch the domain's VM process and wait until it runs; StoreError if it cannot."""
    with store.domain_lock(name):
        dom = store.load(name)
        to_machine_config(dom, console_paths(store, dom))  # refuse a domain that cannot run, here
        if settle(store, name).active:
            raise StoreError(f"failed to start domain '{name}': requested operation is not valid: "
                             "domain is already running")
        domain_id = store.next_id()
        log_path = store.log_path(name)
        with open(log_path, "ab") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} starting domain {name} (id {domain_id})\n".encode())
            log.flush()
            offset = log.tell()
            argv = [sys.executable, "-m", RUNNER_MODULE, "--config-dir", str(store.config_dir),
                    "--runtime-dir", str(store.runtime_dir), "--log-dir", str(store.log_dir),
                    "--id", str(domain_id), name]
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, close_fds=True, env=vm_env())
        return _wait_started(store, name, process, offset)


def _wait_started(store: Store, name: str, process: subprocess.Popen, log_offset: int) -> DomainStatus:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        status = read_status(store, name)
        if status.active and status.pid == process.pid:
            return status
        if process.poll() is not None:
            raise StoreError(f"failed to start domain '{name}': {_log_tail(store, name, log_offset)}")
        time.sleep(POLL_S)
    process.kill()
    process.wait()
    raise StoreError(f"failed to start domain '{name}': not running after {START_TIMEOUT_S:.0f} s "
                     f"(log: {store.log_path(name)})")


def _log_tail(store: Store, name: str, offset: int) -> str:
    try:
        with open(store.log_path(name), "rb") as log:
            log.seek(offset)
            text = log.read()[-LOG_TAIL_BYTES:].decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else f"the VM process exited (log: {store.log_path(name)})"


def destroy(store: Store, name: str) -> None:
    """End the VM process now: SIGTERM, then SIGKILL after a short grace; records 'destroyed'."""
    with store.domain_lock(name):
        store.load(name)
        status = settle(store, name)
        if not status.active:
            raise StoreError(f"failed to destroy domain '{name}': requested operation is not valid: "
                             "domain is not running")
        _terminate(status.pid, name)
        write_status(store, name, DomainStatus("shutoff", "destroyed"))
        cleanup_runtime(store, name)


def _terminate(pid: Optional[int], name: str) -> None:
    assert pid is not None
    for signum, wait_s in ((signal.SIGTERM, DESTROY_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not process_alive(pid, name):
                return
            time.sleep(POLL_S)
    raise StoreError(f"domain '{name}': process {pid} did not end after SIGKILL")


def is_running(store: Store, name: str) -> bool:
    """For callers that hold the domain lock."""
    return settle(store, name).active

"""Where domains live: persistent XML, runtime state, logs and autostart links, as libvirt lays them out.

    config   /etc/pyhv/qemu/NAME.xml            (root)  $XDG_CONFIG_HOME/pyhv/qemu/ (others)
             autostart/NAME.xml -> ../NAME.xml
             networks/NAME.xml, networks/autostart/ (virtual networks, see Store.networks)
    runtime  /run/pyhv/qemu/                    (root)  $XDG_RUNTIME_DIR/pyhv/
             NAME.pid NAME.monitor NAME.console NAME.xml (status) NAME.lock
    logs     /var/log/pyhv/qemu/NAME.log        (root)  $XDG_CACHE_HOME/pyhv/qemu/log/

``PYHV_CONFIG_DIR``, ``PYHV_RUNTIME_DIR`` and ``PYHV_LOG_DIR`` override these (tests use
temporary directories). Every file is replaced atomically (temporary file, fsync, rename,
fsync of the directory); the whole configuration namespace is serialized by a lock on
``CONFIG/.lock`` and each domain's lifecycle by ``RUNTIME/NAME.lock``, always taken in that
order, so concurrent CLI calls neither corrupt a file nor start a domain twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from ..errors import ConfigError
from .domain import DomainConfig, parse_domain
from .domain_xml import domain_to_xml
from .machine_config import check_files

SYSTEM_URI = "pyhv:///system"
SESSION_URI = "pyhv:///session"
URIS = (SYSTEM_URI, SESSION_URI)


class StoreError(ConfigError):
    """A request the store refuses (unknown domain, duplicate name or uuid, running domain)."""


def default_uri() -> str:
    return SYSTEM_URI if os.geteuid() == 0 else SESSION_URI


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


class Store:
    """The configuration directory, runtime directory and log directory of one connection."""

    def __init__(self, config_dir: Path, runtime_dir: Path, log_dir: Path) -> None:
        self.config_dir = Path(config_dir)
        self.runtime_dir = Path(runtime_dir)
        self.log_dir = Path(log_dir)
        for directory in (self.config_dir, self.autostart_dir, self.runtime_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, uri: Optional[str] = None) -> "Store":
        """The store for a libvirt-style URI (``pyhv:///system`` or ``pyhv:///session``)."""
        uri = uri or os.environ.get("PYHV_DEFAULT_URI") or default_uri()
        if uri not in URIS:
            raise StoreError(f"unsupported connection URI '{uri}' (use {' or '.join(URIS)})")
        if uri == SYSTEM_URI:
            config, runtime, logs = Path("/etc/pyhv/qemu"), Path("/run/pyhv/qemu"), Path("/var/log/pyhv/qemu")
        else:
            config = _xdg("XDG_CONFIG_HOME", ".config") / "pyhv" / "qemu"
            runtime_base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir() + f"/pyhv-{os.getuid()}"
            runtime = Path(runtime_base) / "pyhv"
            logs = _xdg("XDG_CACHE_HOME", ".cache") / "pyhv" / "qemu" / "log"
        runtime = Path(os.environ.get("PYHV_RUNTIME_DIR") or runtime)
        logs = Path(os.environ.get("PYHV_LOG_DIR") or (runtime / "log" if "PYHV_RUNTIME_DIR" in os.environ else logs))
        config = Path(os.environ.get("PYHV_CONFIG_DIR") or config)
        try:
            return cls(config, runtime, logs)
        except OSError as err:
            raise StoreError(f"cannot use {uri}: {err.filename}: {err.strerror}") from err

    def networks(self) -> "Store":
        """The same layout one level down, for virtual networks (``CONFIG/networks/NAME.xml``,
        ``networks/autostart/``, ``RUNTIME/networks/``), as libvirt keeps them beside domains.
        Its paths, locks and atomic writes are this class's; :mod:`pyhv.virt.network_ops` reads
        and writes network documents through it."""
        return Store(self.config_dir / "networks", self.runtime_dir / "networks", self.log_dir)

    # --- paths ----------------------------------------------------------------------------
    @property
    def autostart_dir(self) -> Path:
        return self.config_dir / "autostart"

    def config_path(self, name: str) -> Path:
        return self.config_dir / f"{name}.xml"

    def runtime_path(self, name: str, kind: str) -> Path:
        """``kind``: pid, monitor, console, xml (status) or lock."""
        return self.runtime_dir / f"{name}.{kind}"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    # --- locks ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, path: Path) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def config_lock(self) -> "contextlib.AbstractContextManager[None]":
        """Serializes changes to the set of defined domains (names and uuids)."""
        return self._flock(self.config_dir / ".lock")

    def domain_lock(self, name: str) -> "contextlib.AbstractContextManager[None]":
        """Serializes the lifecycle of one domain (start, destroy, undefine)."""
        return self._flock(self.runtime_path(name, "lock"))

    # --- persistent configuration -----------------------------------------------------------
    def names(self) -> List[str]:
        return sorted(p.stem for p in self.config_dir.glob("*.xml"))

    def exists(self, name: str) -> bool:
        return self.config_path(name).is_file()

    def load(self, name: str) -> DomainConfig:
        path = self.config_path(name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise StoreError(f"failed to get domain '{name}': no domain with that name") from None
        return parse_domain(text, str(path))

    def lookup(self, key: str) -> DomainConfig:
        """A domain by name or uuid, as virsh accepts either."""
        if self.exists(key):
            return self.load(key)
        for name in self.names():
            dom = self.load(name)
            if dom.uuid == key.lower():
                return dom
        raise StoreError(f"failed to get domain '{key}': no domain with a matching name or uuid")

    def define(self, text: str, source: str, ignore_unsupported: bool = False) -> Tuple[DomainConfig, bool]:
        """Parse, check and write a domain; True when it is new (False: it was redefined)."""
        dom = parse_domain(text, source, ignore_unsupported)
        check_files(dom)
        with self.config_lock():
            existing = None
            for name in self.names():
                other = self.load(name)
                if name == dom.name:
                    existing = other
                elif other.uuid == dom.uuid:
                    raise StoreError(f"domain '{other.name}' already has uuid {dom.uuid}")
            if existing is not None and existing.uuid != dom.uuid:
                if not re.search(r"<uuid\b", text):
                    dom.uuid = existing.uuid  # a redefinition without a uuid keeps the domain's
                else:
                    raise StoreError(f"domain '{dom.name}' already exists with uuid {existing.uuid}")
            write_atomic(self.config_path(dom.name), domain_to_xml(dom))
        return dom, existing is None

    def undefine(self, name: str, is_running) -> None:
        """Remove a domain's XML and autostart link; refused while ``is_running(name)``."""
        with self.config_lock(), self.domain_lock(name):
            if not self.exists(name):
                raise StoreError(f"failed to get domain '{name}': no domain with that name")
            if is_running(name):
                raise StoreError(f"cannot undefine domain '{name}': it is running (destroy it first)")
            self.set_autostart(name, False)
            self.config_path(name).unlink()
            fsync_dir(self.config_dir)

    # --- autostart ------------------------------------------------------------------------
    def autostart(self, name: str) -> bool:
        return (self.autostart_dir / f"{name}.xml").is_symlink()

    def set_autostart(self, name: str, enabled: bool) -> None:
        link = self.autostart_dir / f"{name}.xml"
        if enabled and not link.is_symlink():
            temporary = self.autostart_dir / f".{name}.xml.{os.getpid()}"
            os.symlink(os.path.relpath(self.config_path(name), self.autostart_dir), temporary)
            os.replace(temporary, link)
        elif not enabled and link.is_symlink():
            link.unlink()
        fsync_dir(self.autostart_dir)

    # --- domain ids ------------------------------------------------------------------------
    def next_id(self) -> int:
        """A fresh domain id (1, 2, ...), as libvirt numbers running domains."""
        counter = self.runtime_dir / "next-id"
        with self._flock(self.runtime_dir / "next-id.lock"):
            try:
                value = int(counter.read_text().strip() or "1")
            except (FileNotFoundError, ValueError):
                value = 1
            write_atomic(counter, f"{value + 1}\n")
        return value


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` so that readers see the old or the new file, never a mix, even after a crash."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Kernel module metadata from the ``.modinfo`` ELF section: a load order, and the
``modules.dep`` and ``modules.alias`` files that ``depmod`` would write for a set of modules.

Debian's kernel package ships no ``modules.dep`` (``depmod`` runs at install time), so the
dependencies of each module are read from the ``depends=`` entry of its ``.modinfo`` section,
and the device patterns it drives from its ``alias=`` entries: a run of NUL-terminated
``key=value`` strings. Only the ELF64 little-endian relocatable objects that x86-64 kernels
build are accepted.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence

from pyhv.errors import BootError

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
# Elf64_Ehdr from e_ident to e_shstrndx; the fields after e_ident, in order.
ELF64_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
# Elf64_Shdr: name, type, flags, addr, offset, size, link, info, addralign, entsize.
ELF64_SECTION = struct.Struct("<IIQQQQIIQQ")
SHT_NOBITS = 8
MODINFO_SECTION = ".modinfo"


class ModinfoError(BootError):
    """A kernel module is not a readable ELF64 object, or its dependencies cannot be resolved."""


def module_name(path: Path) -> str:
    """The name the kernel knows a module by: its file name without ``.ko``, ``-`` as ``_``."""
    name = path.name
    if not name.endswith(".ko"):
        raise ModinfoError(f"{path}: not a kernel module (name does not end in .ko)")
    return name[: -len(".ko")].replace("-", "_")


def _section_bytes(image: bytes, source: str, wanted: str) -> bytes:
    if len(image) < ELF64_HEADER.size or image[:4] != ELF_MAGIC:
        raise ModinfoError(f"{source}: not an ELF file (bad magic at offset 0)")
    fields = ELF64_HEADER.unpack_from(image, 0)
    ident = fields[0]
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB:
        raise ModinfoError(f"{source}: not a 64-bit little-endian ELF (e_ident class {ident[4]}, data {ident[5]})")
    shoff, shentsize, shnum, shstrndx = fields[6], fields[11], fields[12], fields[13]
    if shentsize != ELF64_SECTION.size:
        raise ModinfoError(f"{source}: section header size {shentsize} at offset 0x3a, expected {ELF64_SECTION.size}")
    if shoff + shnum * shentsize > len(image):
        raise ModinfoError(f"{source}: section headers at offset {shoff:#x} ({shnum} entries) run past the end of the file")
    if shstrndx >= shnum:
        raise ModinfoError(f"{source}: section name table index {shstrndx} out of range ({shnum} sections)")
    sections = [ELF64_SECTION.unpack_from(image, shoff + index * shentsize) for index in range(shnum)]

    def contents(index: int) -> bytes:
        header = sections[index]
        kind, offset, size = header[1], header[4], header[5]
        if kind == SHT_NOBITS:
            return b""
        if offset + size > len(image):
            raise ModinfoError(f"{source}: section {index} at offset {offset:#x} size {size:#x} runs past the end of the file")
        return image[offset : offset + size]

    names = contents(shstrndx)
    for index, header in enumerate(sections):
        start = header[0]
        end = names.find(b"\0", start)
        if start < len(names) and end >= 0 and names[start:end].decode("latin-1") == wanted:
            return contents(index)
    raise ModinfoError(f"{source}: no {wanted} section (is this a kernel module?)")


def parse_modinfo(image: bytes, source: str = "<module>") -> Dict[str, List[str]]:
    """Every ``key=value`` of the ``.modinfo`` section; a key may repeat (``alias``)."""
    info: Dict[str, List[str]] = {}
    for raw in _section_bytes(image, source, MODINFO_SECTION).split(b"\0"):
        if not raw:
            continue  # alignment padding between entries
        key, sep, value = raw.decode("utf-8", "replace").partition("=")
        if not sep:
            raise ModinfoError(f"{source}: .modinfo entry {key!r} has no '='")
        info.setdefault(key, []).append(value)
    return info


def read_modinfo(path: Path) -> Dict[str, List[str]]:
    """Parse the ``.modinfo`` section of the module file at ``path``."""
    try:
        image = Path(path).read_bytes()
    except OSError as err:
        raise ModinfoError(f"{path}: cannot read module: {err.strerror}") from err
    return parse_modinfo(image, str(path))


def module_dependencies(path: Path) -> List[str]:
    """The module names listed in ``depends=``, in their listed order."""
    info = read_modinfo(path)
    depends = info.get("depends", [""])
    return [name for name in depends[0].split(",") if name]


def module_aliases(path: Path) -> List[str]:
    """The device patterns (``pci:v00001AF4d*...``, ``virtio:d00000002v*``) the module drives."""
    return read_modinfo(path).get("alias", [])


def index_modules(root: Path) -> Dict[str, Path]:
    """Map each module name to its ``.ko`` file, for every module below ``root``."""
    index: Dict[str, Path] = {}
    for path in sorted(Path(root).rglob("*.ko")):
        index.setdefault(module_name(path), path)
    return index


def load_order(wanted: Iterable[str], index: Mapping[str, Path]) -> List[str]:
    """``wanted`` and everything they depend on, each after its dependencies.

    The order is deterministic: a depth-first walk in the order of ``wanted`` and of each
    ``depends=`` list. A missing module or a dependency cycle is an error naming the chain.
    """
    order: List[str] = []
    done = set()

    def visit(name: str, chain: List[str]) -> None:
        if name in done:
            return
        if name in chain:
            cycle = " -> ".join(chain[chain.index(name):] + [name])
            raise ModinfoError(f"module dependency cycle: {cycle}")
        path = index.get(name)
        if path is None:
            needed_by = f" (needed by {chain[-1]})" if chain else ""
            raise ModinfoError(f"kernel module {name}{needed_by} is not in the module tree")
        for dependency in module_dependencies(path):
            visit(dependency, chain + [name])
        done.add(name)
        order.append(name)

    for name in wanted:
        visit(name, [])
    return order


def modules_dep(order: Sequence[str], index: Mapping[str, Path]) -> str:
    """``modules.dep`` for the modules of ``order`` (a :func:`load_order`), in a flat tree.

    As depmod writes it, and kmod's and busybox's modprobe read it: ``name.ko:`` then every
    module it needs, directly or not, listed so that loading them from the last to the first
    loads each after its own dependencies."""
    lines = []
    for name in order:
        needed = load_order(module_dependencies(index[name]), index)
        lines.append(f"{name}.ko:" + "".join(f" {dep}.ko" for dep in reversed(needed)) + "\n")
    return "".join(lines)


def modules_alias(order: Sequence[str], index: Mapping[str, Path]) -> str:
    """``modules.alias`` for the modules of ``order``: one ``alias PATTERN MODULE`` per line."""
    return "".join(f"alias {pattern} {name}\n" for name in order for pattern in module_aliases(index[name]))


# Characters a modalias pattern may hold and a shell ``case`` pattern reads the same way:
# literals, and the glob operators ``*``, ``?`` and ``[...]``.
_CASE_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:,._-*?[]!")


def alias_case_function(order: Sequence[str], index: Mapping[str, Path], function: str = "module_for") -> str:
    """A shell function that sets ``module`` to the module whose alias matches ``$1`` (or to
    nothing): the whole of ``modules.alias`` as one ``case``, which a shell evaluates far
    faster than a loop over the patterns. The first matching pattern wins. A pattern with a
    character the shell would read differently is an error."""
    arms = []
    for name in order:
        for pattern in module_aliases(index[name]):
            if not pattern or not set(pattern) <= _CASE_SAFE:
                raise ModinfoError(f"module {name}: alias {pattern!r} cannot be a shell case pattern")
            arms.append(f"        {pattern}) module={name} ;;\n")
    return (f"{function}() {{\n    case \"$1\" in\n" + "".join(arms)
            + "        *) module= ;;\n    esac\n}\n")

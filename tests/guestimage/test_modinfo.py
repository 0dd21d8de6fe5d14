"""The .modinfo reader and the dependency order, on Debian's real modules and on crafted ELFs."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from guestimage_elf import craft_module, module_with_depends
from pyhv.guestimage.debian import GUEST_MODULES
from pyhv.guestimage.modinfo import (
    ModinfoError, alias_case_function, index_modules, load_order, module_aliases, module_dependencies, module_name, modules_alias,
    modules_dep, parse_modinfo, read_modinfo,
)


def write_tree(root: Path, depends: Dict[str, str]) -> Dict[str, Path]:
    for name, deps in depends.items():
        (root / f"{name}.ko").write_bytes(module_with_depends(name, deps))
    return index_modules(root)


def test_crafted_module_round_trips() -> None:
    info = parse_modinfo(craft_module(b"license=GPL\0alias=a\0\0\0alias=b\0depends=x,y\0"))
    assert info == {"license": ["GPL"], "alias": ["a", "b"], "depends": ["x,y"]}


def test_real_modules_declare_the_dependencies_debian_built(debian_packages) -> None:
    kernel, _ = debian_packages
    index = index_modules(kernel.modules)
    assert set(module_dependencies(index["virtio_pci"])) == {
        "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"}
    assert "net_failover" in module_dependencies(index["virtio_net"])
    assert module_dependencies(index["virtio_ring"]) == []
    info = read_modinfo(index["virtio_rng"])
    assert info["name"] == ["virtio_rng"]
    assert info["vermagic"][0].startswith(kernel.release + " ")


def test_real_load_order_puts_each_module_after_its_dependencies(debian_packages) -> None:
    kernel, _ = debian_packages
    index = index_modules(kernel.modules)
    order = load_order(GUEST_MODULES, index)
    assert set(GUEST_MODULES) <= set(order)
    assert {"virtio", "virtio_ring", "failover", "net_failover"} <= set(order)
    assert len(order) == len(set(order))
    for position, name in enumerate(order):
        for dependency in module_dependencies(index[name]):
            assert order.index(dependency) < position, f"{dependency} must load before {name}"


def test_order_is_deterministic_and_follows_depends(tmp_path: Path) -> None:
    index = write_tree(tmp_path, {"top": "mid,base", "mid": "base", "base": "", "other": ""})
    assert load_order(["top", "other"], index) == ["base", "mid", "top", "other"]
    assert load_order(["other", "top"], index) == ["other", "base", "mid", "top"]


def test_modules_dep_lists_every_dependency_to_load_from_the_last(tmp_path: Path) -> None:
    """depmod's format: modprobe loads a module's list from its end, then the module."""
    index = write_tree(tmp_path, {"top": "mid,other", "mid": "base", "base": "", "other": ""})
    order = load_order(["top"], index)
    assert modules_dep(order, index) == (
        "base.ko:\nmid.ko: base.ko\nother.ko:\ntop.ko: other.ko mid.ko base.ko\n")


def test_real_modules_alias_names_the_drivers_of_pyhv_devices(debian_packages) -> None:
    kernel, _ = debian_packages
    index = index_modules(kernel.modules)
    lines = modules_alias(load_order(GUEST_MODULES, index), index).splitlines()
    for line in ("alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci", "alias acpi*:LNRO0005:* virtio_mmio",
                 "alias virtio:d00000002v* virtio_blk", "alias virtio:d00000004v* virtio_rng",
                 "alias acpi*:LNXPWRBN:* button"):
        assert line in lines
    assert module_aliases(index["virtio_ring"]) == []  # a library: loaded only as a dependency
    assert all(line.startswith("alias ") and len(line.split()) == 3 for line in lines)


def _case_module(function: str, modalias: str) -> str:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox not on the host PATH (apt-get install busybox-static)")
    script = function + 'module_for "$1"; echo "[$module]"'
    result = subprocess.run([busybox, "sh", "-c", script, "sh", modalias], stdout=subprocess.PIPE,
                            universal_newlines=True, check=True)
    return result.stdout.strip()


def test_alias_case_function_names_the_module_a_modalias_wants(debian_packages) -> None:
    kernel, _ = debian_packages
    index = index_modules(kernel.modules)
    function = alias_case_function(load_order(GUEST_MODULES, index), index)
    assert _case_module(function, "pci:v00001AF4d00001044sv00001AF4sd00001100bc00scFFi00") == "[virtio_pci]"
    assert _case_module(function, "virtio:d00000002v00001AF4") == "[virtio_blk]"
    assert _case_module(function, "acpi:LNRO0005:") == "[virtio_mmio]"
    assert _case_module(function, "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw") == "[evdev]"
    assert _case_module(function, "of:NvirtioTCvirtio,mmioX") == "[]"  # no prefix match without '*'
    assert _case_module(function, "pci:v00008086d00001237sv00000000sd00000000bc06sc00i00") == "[]"


def test_alias_that_a_shell_would_misread_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.ko").write_bytes(craft_module(b"alias=pci:v$(reboot)*\0depends=\0"))
    index = index_modules(tmp_path)
    with pytest.raises(ModinfoError, match=r"module bad: alias 'pci:v\$\(reboot\)\*' cannot be a shell case"):
        alias_case_function(["bad"], index)


def test_module_names_use_underscores(tmp_path: Path) -> None:
    assert module_name(Path("drivers/char/hw_random/virtio-rng.ko")) == "virtio_rng"
    with pytest.raises(ModinfoError, match="not a kernel module"):
        module_name(Path("virtio.o"))


def test_cycle_is_reported_with_its_chain(tmp_path: Path) -> None:
    index = write_tree(tmp_path, {"a": "b", "b": "c", "c": "a"})
    with pytest.raises(ModinfoError, match="cycle: a -> b -> c -> a"):
        load_order(["a"], index)


def test_missing_dependency_names_who_needs_it(tmp_path: Path) -> None:
    index = write_tree(tmp_path, {"virtio_blk": "virtio"})
    with pytest.raises(ModinfoError, match=r"virtio \(needed by virtio_blk\) is not in the module tree"):
        load_order(["virtio_blk"], index)


def _bad_images() -> List[tuple]:
    good = craft_module(b"depends=\0")
    truncated_headers = good[:-10]
    bad_offset = bytearray(good)
    struct.pack_into("<Q", bad_offset, len(good) - 2 * 64 + 24, 1 << 20)  # .modinfo sh_offset
    bad_shentsize = bytearray(good)
    struct.pack_into("<H", bad_shentsize, 0x3A, 40)
    bad_strndx = bytearray(good)
    struct.pack_into("<H", bad_strndx, 0x3E, 7)
    return [
        (b"MZ not an elf at all" + bytes(64), "not an ELF file"),
        (b"\x7fELF", "not an ELF file"),
        (craft_module(b"depends=\0", elf_class=1), "not a 64-bit little-endian ELF"),
        (truncated_headers, "run past the end of the file"),
        (bytes(bad_offset), "section 1 at offset 0x100000"),
        (bytes(bad_shentsize), "section header size 40"),
        (bytes(bad_strndx), "section name table index 7"),
        (craft_module(b"depends=\0", section_name=b".text"), "no .modinfo section"),
        (craft_module(b"license\0"), "entry 'license' has no '='"),
    ]


@pytest.mark.parametrize("image,message", _bad_images())
def test_bad_elf_gives_a_clear_error(image: bytes, message: str) -> None:
    with pytest.raises(ModinfoError, match=message) as caught:
        parse_modinfo(image, "crafted.ko")
    assert str(caught.value).startswith("crafted.ko: ")


def test_unreadable_module_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModinfoError, match="gone.ko: cannot read module"):
        read_modinfo(tmp_path / "gone.ko")

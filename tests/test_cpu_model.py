"""The default CPU model: what every accelerator advertises."""

import pytest

from pyhv import cpu_model
from pyhv.errors import ConfigError


def regs_to_text(*words):
    return b"".join(w.to_bytes(4, "little") for w in words).decode("ascii")


def test_vendor_and_brand():
    model = cpu_model.pyhv64()
    _, ebx, ecx, edx = model.cpuid(0)
    assert regs_to_text(ebx, edx, ecx) == "AuthenticAMD"
    brand = "".join(regs_to_text(*model.cpuid(leaf)) for leaf in (0x8000_0002, 0x8000_0003, 0x8000_0004))
    assert brand.rstrip("\0").strip() == cpu_model.BRAND_STRING


def test_baseline_features_only():
    model = cpu_model.pyhv64()
    _, _, ecx, edx = model.cpuid(1)
    assert edx & cpu_model.SSE2 and edx & cpu_model.FXSR and edx & cpu_model.APIC
    assert ecx == cpu_model.HYPERVISOR | cpu_model.TSC_DEADLINE  # no SSE3, CX16, XSAVE, AVX, POPCNT
    assert model.cpuid(7) == (0, 0, 0, cpu_model.SERIALIZE)  # the software CPU has it
    _, _, _, ext_edx = model.cpuid(0x8000_0001)
    assert ext_edx & cpu_model.EXT_LM and ext_edx & cpu_model.EXT_NX and ext_edx & cpu_model.EXT_SYSCALL
    assert model.cpuid(0x8000_0007)[3] & cpu_model.INVARIANT_TSC


def test_apic_id_in_leaf1():
    assert cpu_model.pyhv64().cpuid(1, apic_id=3)[1] >> 24 == 3


def test_out_of_range_leaves_answer_as_the_highest_basic_leaf():
    model = cpu_model.pyhv64()
    assert model.cpuid(0x20) == model.cpuid(7)
    assert model.cpuid(0x8000_0100) == model.cpuid(7)


def test_resolve():
    assert cpu_model.resolve(None).name == "pyhv64"
    assert cpu_model.resolve("qemu64").name == "pyhv64"
    assert cpu_model.resolve("host") is None
    with pytest.raises(ConfigError, match="unknown CPU model"):
        cpu_model.resolve("skylake")


@pytest.mark.parametrize("host_has_it", [False, True])
def test_kvm_advertises_serialize_only_where_the_host_has_it(host_has_it):
    # Under KVM the guest runs its own instructions: a feature the host lacks would be #UD.
    from pyhv.accel.kvm import cpuid_entries
    from pyhv.kvm import structs as s
    supported = [s.kvm_cpuid_entry2(function=7, index=0, edx=cpu_model.SERIALIZE if host_has_it else 0)]
    leaf7 = [e for e in cpuid_entries(cpu_model.pyhv64(), supported, apic_id=0) if e.function == 7]
    assert len(leaf7) == 1 and bool(leaf7[0].edx & cpu_model.SERIALIZE) == host_has_it

"""Random bytes as code: the CPU ends in a guest exception, HLT, a budget stop or a triple
fault, never a Python exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from pyhv.accel.tcg import Cpu, StopReason
from pyhv.bus import Bus
from pyhv.cpu_state import CpuBootState, Segment, TableRegister
from pyhv.memory import GuestMemory, MiB

from .harness import CODE, long_mode_cpu

_long = {}


def _long_cpu():
    if "cpu" not in _long:
        _long["cpu"] = long_mode_cpu(b"")
    return _long["cpu"]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=48))
def test_random_bytes_long_mode(code):
    memory, cpu = _long_cpu()
    memory.fill(CODE, 64, 0)
    memory.write(CODE, code)
    # The same machine is reused: restore the pieces random code may have clobbered.
    memory.fill(0x20000, 0x1000, 0)
    cpu.flush_blocks()
    cpu.set_registers({"rip": CODE, "rsp": 0x80000, "rflags": 2, "rax": 0x20000, "rbx": 0x20000,
                       "rcx": 3, "rdx": 0x20000, "rsi": 0x20000, "rdi": 0x20000, "rbp": 0x20000,
                       "cpl": 0})
    result = cpu.run(200)
    assert result.reason in (StopReason.HLT, StopReason.BUDGET, StopReason.SHUTDOWN)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=32), st.sampled_from([16, 32]))
def test_random_bytes_legacy_modes(code, bits):
    memory = GuestMemory(2 * MiB)
    cpu = Cpu(memory, Bus("pio"), Bus("mmio"))
    memory.write(CODE, code)
    if bits == 16:
        boot = CpuBootState(rip=0, rsp=0xFFF0, cs=Segment.real_mode(CODE >> 4, code=True),
                            idt=TableRegister(0, 0x3FF))
    else:
        boot = CpuBootState(rip=CODE, rsp=0x80000, cr0=0x11, cs=Segment.flat32(0x08, True),
                            ds=Segment.flat32(0x10, False), ss=Segment.flat32(0x10, False),
                            es=Segment.flat32(0x10, False), gdt=TableRegister(0x500, 0x17),
                            idt=TableRegister(0x4000, 0))
    cpu.load_state(boot)
    result = cpu.run(200)
    assert result.reason in (StopReason.HLT, StopReason.BUDGET, StopReason.SHUTDOWN)

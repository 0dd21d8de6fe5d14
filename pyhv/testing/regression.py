"""Divergences turned into fixed cases: a snippet's bytes and state, with what KVM did.

:func:`record` runs a case on the oracle and returns the expectation as plain data to paste
into a test; :func:`check` runs it on the software CPU alone (no KVM or assembler needed)
and lists the differences, in the words of :func:`.differential.compare`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .differential import HLT, compare
from .layout import COMPARED_REGIONS
from .outcome import GPR_NAMES, Outcome
from .snippets import Snippet, seeded_image


def snippet_of(case: Dict[str, Any]) -> Snippet:
    gprs = {name: case["gprs"].get(name, 0) for name in GPR_NAMES}
    patches = tuple((addr, bytes.fromhex(data)) for addr, data in case.get("patches", ()))
    return Snippet(case["asm"], gprs, case["rflags"], case.get("image_seed", 0), patches,
                   case.get("undefined_flags", 0))


def _changes(snippet: Snippet, memory: bytes) -> List[Tuple[int, str]]:
    """The compared bytes that differ from the snippet's starting image, as (address, hex)."""
    image = seeded_image(snippet)
    out = []
    base = 0
    for addr, size in COMPARED_REGIONS:
        before = image[addr]
        after = memory[base:base + size]
        k = 0
        while k < size:
            if before[k] != after[k]:
                start = k
                while k < size and before[k] != after[k]:
                    k += 1
                out.append((addr + start, after[start:k].hex()))
            else:
                k += 1
        base += size
    return out


def record(oracle, case: Dict[str, Any]) -> Dict[str, Any]:
    """Run ``case`` on the KVM oracle; return its expectation as plain data."""
    snippet = snippet_of(case)
    out = oracle.run(bytes.fromhex(case["code"]) + HLT, snippet.gprs, snippet.rflags,
                     seeded_image(snippet))
    if out.failure:
        raise RuntimeError(f"KVM could not run {case['asm']!r}: {out.failure}")
    return {"regs": {name: out.regs[n] for n, name in enumerate(GPR_NAMES)}, "rip": out.rip,
            "rflags": out.rflags, "vector": out.vector, "error_code": out.error_code,
            "cr2": out.cr2, "memory_changes": _changes(snippet, out.memory)}


def _expected_outcome(snippet: Snippet, expect: Dict[str, Any]) -> Outcome:
    image = seeded_image(snippet)
    memory = bytearray(b"".join(image[addr] for addr, _ in COMPARED_REGIONS))
    for address, data in expect["memory_changes"]:
        base = 0
        for addr, size in COMPARED_REGIONS:
            if addr <= address < addr + size:
                offset = base + address - addr
                memory[offset:offset + len(data) // 2] = bytes.fromhex(data)
            base += size
    regs = tuple(expect["regs"][name] for name in GPR_NAMES)
    return Outcome(regs, expect["rip"], expect["rflags"], expect["vector"], expect["error_code"],
                   expect["cr2"], bytes(memory))


def check(runner, case: Dict[str, Any]) -> List[str]:
    """Differences between the software CPU and the recorded KVM result of ``case``."""
    snippet = snippet_of(case)
    actual = runner.run(bytes.fromhex(case["code"]) + HLT, snippet.gprs, snippet.rflags,
                        seeded_image(snippet))
    return compare(snippet, _expected_outcome(snippet, case["expect"]), actual)

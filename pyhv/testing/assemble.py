"""Batch assembly with GNU as: thousands of snippets in one ``as`` run.

Each snippet gets a label; after assembling, ``nm`` gives the label offsets and
``objcopy`` the raw .text, which is cut at the labels. A syntax error names the snippet.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import List, Sequence

from ..errors import PyhvError

_LABEL = "pyhv_snippet_"
_ERROR_LINE = re.compile(r":(\d+): (?:Error|Warning): (.*)")


class AssemblyError(PyhvError):
    """GNU as rejected a snippet (a generator bug) or binutils is missing."""


def assembler_missing() -> str:
    """Why batch assembly cannot run here, or "" when it can."""
    for tool in ("as", "nm", "objcopy"):
        if shutil.which(tool) is None:
            return f"{tool} (binutils) is not installed"
    return ""


def assemble_many(sources: Sequence[str]) -> List[bytes]:
    """Assemble each AT&T 64-bit source on its own; return their machine code, in order."""
    missing = assembler_missing()
    if missing:
        raise AssemblyError(missing)
    lines = [".code64", ".text"]
    owner: List[int] = [-1, -1]  # source line number -> snippet index
    for n, source in enumerate(sources):
        lines.append(f"{_LABEL}{n}:")
        owner.append(n)
        for line in source.split("\n"):
            lines.append(line)
            owner.append(n)
    lines.append(f"{_LABEL}end:")
    with tempfile.TemporaryDirectory(prefix="pyhv-as-") as tmp:
        src = os.path.join(tmp, "snippets.s")
        obj = os.path.join(tmp, "snippets.o")
        raw = os.path.join(tmp, "snippets.bin")
        with open(src, "w") as f:
            f.write("\n".join(lines) + "\n")
        result = subprocess.run(["as", "--64", "-o", obj, src], capture_output=True, text=True)
        if result.returncode != 0 or "Warning" in result.stderr:
            raise AssemblyError(_explain(result.stderr, lines, owner, sources))
        symbols = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", obj, raw], check=True,
                       capture_output=True)
        with open(raw, "rb") as f:
            text = f.read()
    offsets = {}
    for line in symbols.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].startswith(_LABEL):
            offsets[parts[2][len(_LABEL):]] = int(parts[0], 16)
    starts = [offsets[str(n)] for n in range(len(sources))] + [offsets["end"]]
    return [text[starts[n]:starts[n + 1]] for n in range(len(sources))]


def _explain(stderr: str, lines: List[str], owner: List[int], sources: Sequence[str]) -> str:
    for line in stderr.splitlines():
        match = _ERROR_LINE.search(line)
        if match:
            number = int(match.group(1)) - 1
            index = owner[number] if 0 <= number < len(owner) else -1
            where = f"snippet {index} ({sources[index]!r})" if index >= 0 else f"line {number + 1}"
            return f"GNU as rejected {where}: {match.group(2)}"
    return f"GNU as failed: {stderr.strip()[:500]}"

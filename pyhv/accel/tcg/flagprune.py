"""Dropping the flag locals of a translated block's source that nothing reads.

The translator computes each instruction's flags into locals (``fa3``, ``fr3``, ...) and most
of them die unread, overwritten by the next instruction's. The pass works on the source text,
where a block compiles (:func:`.compiler.compile_block`): in the vCPU thread, or in the compile
helper beside it.
"""

from __future__ import annotations

import re
from typing import Dict, List, Set

# A flag local's name (fa3, fr12, ...), searched without a leading \b: re finds a literal
# prefix fast and a pattern that starts with \b slowly (0.02 against 0.2 ms a block on
# CPython); the character before each match is checked instead, since hex literals hold
# such names too (0x1cfa2).
_FLAG_NAME = re.compile(r"f[abcrlq]\d+\b")
_FLAG_DEF = re.compile(r"^\s*(?:if )?(f[abcrlq]\d+) (?:=|<|>>) ")


def _flag_names(text: str) -> List[str]:
    """Every flag local named in ``text``, in order, repeats included."""
    names = []
    for match in _FLAG_NAME.finditer(text):
        start = match.start()
        if start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_"):
            names.append(match.group())
    return names


def prune_flag_locals(source: str) -> str:
    """Drop assignments to flag locals nothing reads (most flags die unread).

    A name is read where it appears other than on a line that assigns it. Dropping a dead
    ``fc3 = … fr1 …`` can make ``fr1`` dead too: up to three rounds.
    """
    lines = source.split("\n")
    reads: Dict[str, int] = {}
    for name in _flag_names(source):
        reads[name] = reads.get(name, 0) + 1
    assignments = []  # (line index, the name it assigns, the other flag locals it reads)
    for index, line in enumerate(lines):
        start = line.lstrip()[:4]
        if start[:1] != "f" and start != "if f":
            continue
        match = _FLAG_DEF.match(line)
        if match is None:
            continue
        defined = match.group(1)
        names = _flag_names(line)
        reads[defined] -= names.count(defined)
        assignments.append((index, defined, [name for name in names if name != defined]))
    dead: Set[int] = set()
    for _ in range(3):
        dying = [entry for entry in assignments if entry[0] not in dead and reads[entry[1]] <= 0]
        if not dying:
            break
        for index, _defined, names in dying:
            dead.add(index)
            for name in names:
                reads[name] -= 1
    if not dead:
        return source
    return "\n".join(line for index, line in enumerate(lines) if index not in dead)

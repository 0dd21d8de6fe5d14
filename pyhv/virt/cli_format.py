"""What every virsh command shares: its argument check and virsh's table layout."""

from __future__ import annotations

from typing import List

from .store import StoreError


def split_args(args: List[str], flags: tuple, command: str, positional: int) -> tuple:
    """(set of flags given, positional arguments); StoreError for anything else."""
    given = set()
    rest = []
    for arg in args:
        if arg.startswith("--"):
            if arg not in flags:
                raise StoreError(f"command '{command}' doesn't support option {arg}")
            given.add(arg)
        else:
            rest.append(arg)
    if len(rest) != positional:
        raise StoreError(f"command '{command}' takes {positional} argument(s), got {len(rest)}: {' '.join(rest)}")
    return given, rest


def format_table(header: List[str], rows: List[List[str]]) -> str:
    """virsh's table: a space before each cell, two after all but the last, dashes under the header."""
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(cells: List[str]) -> str:
        padded = [f" {cell:<{widths[i]}}  " for i, cell in enumerate(cells[:-1])]
        return "".join(padded) + f" {cells[-1]}"

    return "\n".join([line(header), "-" * sum(w + 3 for w in widths)] + [line(r) for r in rows]) + "\n"

"""Sizes as qemu-img reads and prints them: "10G", "1.5M", "512" bytes; "324 KiB"."""

from __future__ import annotations

import re

from .errors import BlockOptionError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "p": 1 << 50, "e": 1 << 60}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)\s*$", re.IGNORECASE)
MAX_SIZE = (1 << 63) - 1


def parse_size(text: str, what: str = "size") -> int:
    """Parse a byte count with an optional binary suffix (K, M, G, T, P, E)."""
    match = _SIZE.match(text)
    if not match:
        raise BlockOptionError(f"invalid {what} '{text}': use a number with an optional "
                               "K, M, G, T, P or E suffix")
    number, unit = match.groups()
    scale = _UNITS[unit.lower()]
    if "." in number:
        whole, frac = number.split(".")
        value = int(whole) * scale + int(frac) * scale // 10 ** len(frac)
    else:
        value = int(number) * scale
    if value > MAX_SIZE:
        raise BlockOptionError(f"{what} '{text}' is too large")
    return value


def human_size(value: int) -> str:
    """qemu's size_to_str: three significant digits in the largest fitting binary unit."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    index = 0
    while index + 1 < len(units) and value >= 1 << (10 * (index + 1)):
        index += 1
    scaled = value / (1 << (10 * index))
    return "%0.3g %s" % (scaled, units[index])

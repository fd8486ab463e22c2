"""Byte sizes as people write them (``"256KiB"``, ``"4MiB"``) and back."""

from __future__ import annotations

import math
import re
from typing import Any

UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}
MAX_BYTES = 2**50  # 1 PiB: far beyond any device, and exact in float64
SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(value: Any) -> int:
    """``"256KiB"``, ``"4MiB"``, ``"1.5MB"``, ``1048576`` → bytes (1 to :data:`MAX_BYTES`)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4MiB, got a boolean")
    if isinstance(value, int):
        number, unit = float(max(0, min(value, MAX_BYTES + 1))), ""  # no float overflow
    elif isinstance(value, float):
        number, unit = value, ""
    elif isinstance(value, str) and (m := SIZE_RE.match(value)):
        number, unit = float(m.group(1)), m.group(2).upper()
    else:
        raise ValueError("expected a size such as 256KiB, 4MiB or 1GB")
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; allowed: B, KB, MB, GB, KiB, MiB, GiB")
    size = number * UNITS[unit]
    if not math.isfinite(size) or not 1 <= size <= MAX_BYTES:
        raise ValueError("size must be between 1B and 1PiB")
    return int(size)


def format_bytes(size: float) -> str:
    """1536 → ``"1.5KiB"``; the inverse of :func:`parse_bytes` for display."""
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.4g}{unit}"
        size /= 1024
    return f"{size:.4g}GiB"

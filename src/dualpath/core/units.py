"""Parsing human-friendly quantities from flags and config files: "400Gbps", "50MB/s", "8GiB"."""

from __future__ import annotations

import re

from dualpath.core.errors import UserInputError

_SIZE_UNITS: dict[str, float] = {
    "": 1, "b": 1,
    "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_BIT_RATE_UNITS: dict[str, float] = {"bps": 1 / 8, "kbps": 1e3 / 8, "mbps": 1e6 / 8,
                                     "gbps": 1e9 / 8, "tbps": 1e12 / 8}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]*)\s*$")


def parse_bytes(text: str | int | float) -> int:
    """'8GiB' -> 8589934592; plain numbers are bytes."""
    if isinstance(text, int | float):
        return int(text)
    m = _NUMBER.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise UserInputError(f"cannot parse size {text!r}; use e.g. 512MiB, 8GB or a byte count")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_bandwidth(text: str | int | float | None) -> float | None:
    """'400Gbps' / '50GB/s' / '200MiB/s' / bytes-per-second number -> bytes/s.

    None, 'none', 'unlimited' and 'inf' mean unlimited (None).
    """
    if text is None:
        return None
    if isinstance(text, int | float):
        if text <= 0:
            raise UserInputError(f"bandwidth must be positive, got {text}")
        return float(text)
    if text.strip().lower() in ("none", "unlimited", "inf"):
        return None
    m = _NUMBER.match(text)
    if not m:
        raise UserInputError(f"cannot parse bandwidth {text!r}; use e.g. 400Gbps, 50GB/s, 200MiB/s")
    value, unit = float(m.group(1)), m.group(2)
    lower = unit.lower()
    if lower in _BIT_RATE_UNITS and not unit.endswith("Bps"):
        result = value * _BIT_RATE_UNITS[lower]
    else:
        size_unit = lower.removesuffix("/s").removesuffix("ps")
        if size_unit not in _SIZE_UNITS:
            raise UserInputError(
                f"cannot parse bandwidth {text!r}; use e.g. 400Gbps, 50GB/s, 200MiB/s"
            )
        result = value * _SIZE_UNITS[size_unit]
    if result <= 0:
        raise UserInputError(f"bandwidth must be positive, got {text!r}")
    return result

"""Small helpers every benchmark shares: JSON output and plain-text tables (percentiles live in
`dualpath.workload.metrics`)."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def parse_modes(text: str) -> list[tuple[str, str]]:
    """`--modes` "dtype:quantization,..." as pairs; IndexError when one lacks its ":"."""
    return [(m.split(":")[0], m.split(":")[1]) for m in text.split(",") if m]


def machine_info() -> dict[str, Any]:
    """What ran the benchmark, embedded in every result JSON."""
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "timestamp_unix_s": time.time(),
    }


def write_json(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Write one JSON object (atomic: temp file + rename), creating parent directories."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")
    tmp.replace(target)


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Render rows as an aligned plain-text table (floats with 4 significant digits)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in cells)
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}"
    return str(value)

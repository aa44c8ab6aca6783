"""Load trajectories from any supported trace file, detecting its format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dualpath.core.errors import TraceFormatError, UserInputError
from dualpath.workload.mooncake import import_mooncake
from dualpath.workload.trace_file import FORMAT_NAME, read_trace
from dualpath.workload.trajectory import Trajectory

TRACE_FORMATS: tuple[str, ...] = ("auto", "dualpath", "mooncake", "mooncake-session")


def detect_format(path: Path) -> str:
    """dualpath (header line), mooncake-session (requests with session_id) or mooncake."""
    try:
        with path.open(encoding="utf-8") as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise TraceFormatError(f"invalid JSON ({exc.msg})", path=str(path),
                                           line=number) from None
                if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
                    return "dualpath"
                if isinstance(obj, dict) and "input_length" in obj:
                    return "mooncake-session" if "session_id" in obj else "mooncake"
                raise TraceFormatError(
                    "unknown trace format (neither a dualpath-trace header nor a Mooncake "
                    "request with input_length)", path=str(path), line=number,
                )
    except OSError as exc:
        raise UserInputError(f"cannot read trace {str(path)!r}: {exc.strerror or exc}") from None
    raise TraceFormatError("empty trace file", path=str(path))


def load_trajectories(path: Path, fmt: str = "auto") -> tuple[list[Trajectory], dict[str, Any]]:
    """(trajectories, info for reports: source, format, counts)."""
    if fmt not in TRACE_FORMATS:
        raise UserInputError(f"unknown trace format {fmt!r}; one of {', '.join(TRACE_FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    info: dict[str, Any] = {"source": str(path), "format": fmt}
    if fmt == "dualpath":
        return read_trace(path), info
    result = import_mooncake(path, session=(fmt == "mooncake-session"))
    info["num_requests"] = result.num_requests
    info["adjusted_turns"] = result.adjusted_turns
    return result.trajectories, info

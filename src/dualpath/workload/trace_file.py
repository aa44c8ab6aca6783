"""The DualPath trace file: JSONL, versioned.

Line 1 is a header, every following non-blank line one trajectory::

    {"format": "dualpath-trace", "version": 1, "meta": {...free-form: generator, source...}}
    {"id": "64k-0-0", "turns": [[3012, 95], [410, 188], ...]}
    {"id": "req-17", "turns": [[1500, 40]], "arrival_s": 12.5,
     "prefix_hash_ids": [4, 5, 9], "hash_block_tokens": 512}

`turns` is a list of [append_tokens, generated_tokens] pairs (integers >= 1). Optional:
`arrival_s` (arrival time in the source trace), `prefix_hash_ids` / `hash_block_tokens`
(content ids of the first turn's append, one per block, so requests that share leading ids
share leading tokens). Readers reject unknown versions; every error names the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dualpath.core.errors import TraceFormatError, UserInputError
from dualpath.workload.trajectory import Trajectory, Turn

FORMAT_NAME = "dualpath-trace"
FORMAT_VERSION = 1


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every non-blank line; bad JSON is a TraceFormatError."""
    p = Path(path)
    try:
        handle = p.open(encoding="utf-8")
    except OSError as exc:
        raise UserInputError(f"cannot read trace {str(p)!r}: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(f"invalid JSON ({exc.msg})", path=str(p), line=number) from None
            if not isinstance(obj, dict):
                raise TraceFormatError("expected a JSON object", path=str(p), line=number)
            yield number, obj


def _int_list(value: Any, what: str, path: str, line: int) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise TraceFormatError(f"{what} must be a list of integers", path=path, line=line)
    return value


def trajectory_from_json(obj: dict[str, Any], path: str, line: int) -> Trajectory:
    turns_raw = obj.get("turns")
    if not isinstance(turns_raw, list) or not turns_raw:
        raise TraceFormatError("'turns' must be a non-empty list", path=path, line=line)
    turns: list[Turn] = []
    for pair in turns_raw:
        values = _int_list(pair, "each turn", path, line)
        if len(values) != 2 or min(values) < 1:
            raise TraceFormatError(
                "each turn must be [append_tokens, generated_tokens], both >= 1",
                path=path, line=line,
            )
        turns.append(Turn(values[0], values[1]))
    arrival = obj.get("arrival_s")
    if arrival is not None and (not isinstance(arrival, int | float) or isinstance(arrival, bool)):
        raise TraceFormatError("'arrival_s' must be a number", path=path, line=line)
    block = obj.get("hash_block_tokens", 512)
    if not isinstance(block, int) or block < 1:
        raise TraceFormatError("'hash_block_tokens' must be an integer >= 1", path=path, line=line)
    return Trajectory(
        trajectory_id=str(obj.get("id", f"line-{line}")),
        turns=tuple(turns),
        arrival_s=None if arrival is None else float(arrival),
        prefix_hash_ids=tuple(_int_list(obj.get("prefix_hash_ids", []), "'prefix_hash_ids'", path, line)),
        hash_block_tokens=block,
    )


def trajectory_to_json(t: Trajectory) -> dict[str, Any]:
    obj: dict[str, Any] = {"id": t.trajectory_id,
                           "turns": [[x.append_tokens, x.gen_tokens] for x in t.turns]}
    if t.arrival_s is not None:
        obj["arrival_s"] = t.arrival_s
    if t.prefix_hash_ids:
        obj["prefix_hash_ids"] = list(t.prefix_hash_ids)
        obj["hash_block_tokens"] = t.hash_block_tokens
    return obj


def write_trace(
    path: str | Path, trajectories: Iterable[Trajectory], meta: dict[str, Any] | None = None
) -> int:
    """Write a trace file; returns the number of trajectories written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with p.open("w", encoding="utf-8") as fh:
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "meta": meta or {}}
        fh.write(json.dumps(header) + "\n")
        for t in trajectories:
            fh.write(json.dumps(trajectory_to_json(t), separators=(",", ":")) + "\n")
            count += 1
    return count


def read_trace(path: str | Path) -> list[Trajectory]:
    """Read a DualPath trace file (header checked)."""
    p = str(path)
    lines = iter_json_lines(path)
    first = next(lines, None)
    if first is None:
        raise TraceFormatError("empty trace file", path=p)
    number, header = first
    if header.get("format") != FORMAT_NAME:
        raise TraceFormatError(
            f"not a {FORMAT_NAME} file (first line has no \"format\": \"{FORMAT_NAME}\" header)",
            path=p, line=number,
        )
    if header.get("version") != FORMAT_VERSION:
        raise TraceFormatError(
            f"unsupported trace version {header.get('version')!r} (this reader knows "
            f"{FORMAT_VERSION})", path=p, line=number,
        )
    out = [trajectory_from_json(obj, p, n) for n, obj in lines]
    if not out:
        raise TraceFormatError("the trace has a header but no trajectories", path=p)
    return out

"""Importers for Mooncake's public trace format and its session-based variant.

Mooncake trace (JSONL, one request a line)::

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ...]}

`timestamp` is in milliseconds; each hash id names one 512-token block of the prompt (the last
one may be partial), so two requests with the same leading hash ids share those leading
tokens. Each request becomes a one-turn trajectory whose first append is described by its
hash ids (`Trajectory.prefix_hash_ids`), which keeps the prefix sharing when token contents are
drawn (`dualpath.workload.tokens`). `output_length` 0 becomes 1 (a completion makes at least
one token).

Session variant: the same fields plus `session_id` (string or integer). The requests of one
session, ordered by timestamp, become the turns of one trajectory arriving at the first
request's timestamp. Turn k's append = input_length_k - (input_length_{k-1} +
output_length_{k-1}); where a trace's contexts do not grow like that (the application dropped
or rewrote history) the append is set to 1 token and the import counts it (`adjusted_turns`).
Think time between a session's requests is not kept: the driver runs turns back to back.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualpath.core.errors import TraceFormatError
from dualpath.workload.trace_file import iter_json_lines
from dualpath.workload.trajectory import Trajectory, Turn

log = logging.getLogger(__name__)

MOONCAKE_BLOCK_TOKENS = 512
MS_PER_S = 1000.0


@dataclass(frozen=True)
class MooncakeRequest:
    line: int
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]
    session_id: str | None


@dataclass(frozen=True)
class ImportResult:
    trajectories: list[Trajectory]
    num_requests: int
    adjusted_turns: int


def _field_int(obj: dict[str, Any], name: str, path: str, line: int, minimum: int) -> int:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceFormatError(f"{name!r} must be an integer, got {value!r}", path=path, line=line)
    if value < minimum:
        raise TraceFormatError(f"{name!r} must be >= {minimum}, got {value}", path=path, line=line)
    return value


def parse_request(obj: dict[str, Any], path: str, line: int, *, session: bool) -> MooncakeRequest:
    stamp = obj.get("timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or stamp < 0:
        raise TraceFormatError(
            f"'timestamp' must be a number >= 0 (milliseconds), got {stamp!r}", path=path, line=line
        )
    hash_ids = obj.get("hash_ids", [])
    if not isinstance(hash_ids, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) for h in hash_ids
    ):
        raise TraceFormatError("'hash_ids' must be a list of integers", path=path, line=line)
    session_id: str | None = None
    if session:
        raw = obj.get("session_id")
        if raw is None or isinstance(raw, bool) or not isinstance(raw, str | int):
            raise TraceFormatError("'session_id' (string or integer) is missing", path=path, line=line)
        session_id = str(raw)
    return MooncakeRequest(
        line=line,
        timestamp_ms=float(stamp),
        input_length=_field_int(obj, "input_length", path, line, 1),
        output_length=max(1, _field_int(obj, "output_length", path, line, 0)),
        hash_ids=tuple(hash_ids),
        session_id=session_id,
    )


def import_mooncake(path: str | Path, *, session: bool | None = None) -> ImportResult:
    """Import a Mooncake trace. session=None: sessions iff the first request has session_id."""
    p = str(path)
    requests: list[MooncakeRequest] = []
    for number, obj in iter_json_lines(path):
        if session is None:
            session = "session_id" in obj
        requests.append(parse_request(obj, p, number, session=session))
    if not requests:
        raise TraceFormatError("the trace has no requests", path=p)
    if not session:
        trajectories = [
            Trajectory(
                trajectory_id=f"req-{r.line}",
                turns=(Turn(r.input_length, r.output_length),),
                arrival_s=r.timestamp_ms / MS_PER_S,
                prefix_hash_ids=r.hash_ids,
                hash_block_tokens=MOONCAKE_BLOCK_TOKENS,
            )
            for r in requests
        ]
        return ImportResult(trajectories, len(requests), 0)
    return _sessions(requests)


def _sessions(requests: list[MooncakeRequest]) -> ImportResult:
    by_session: dict[str, list[MooncakeRequest]] = {}
    for r in requests:
        by_session.setdefault(str(r.session_id), []).append(r)
    adjusted = 0
    trajectories: list[Trajectory] = []
    for sid, reqs in by_session.items():
        reqs.sort(key=lambda r: (r.timestamp_ms, r.line))
        turns = [Turn(reqs[0].input_length, reqs[0].output_length)]
        for prev, cur in itertools.pairwise(reqs):
            append = cur.input_length - (prev.input_length + prev.output_length)
            if append < 1:
                adjusted += 1
                append = 1
            turns.append(Turn(append, cur.output_length))
        trajectories.append(
            Trajectory(
                trajectory_id=f"session-{sid}",
                turns=tuple(turns),
                arrival_s=reqs[0].timestamp_ms / MS_PER_S,
                prefix_hash_ids=reqs[0].hash_ids,
                hash_block_tokens=MOONCAKE_BLOCK_TOKENS,
            )
        )
    trajectories.sort(key=lambda t: t.arrival_s or 0.0)
    if adjusted:
        log.warning("%d session turns did not extend their predecessor; their append is 1 token",
                    adjusted)
    return ImportResult(trajectories, len(requests), adjusted)

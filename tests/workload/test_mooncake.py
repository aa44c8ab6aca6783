"""Mooncake trace import: prefix sharing kept as shared token prefixes; the session variant."""

from __future__ import annotations

import json

import pytest

from dualpath.core.errors import TraceFormatError
from dualpath.workload.loader import load_trajectories
from dualpath.workload.mooncake import import_mooncake
from dualpath.workload.tokens import TokenSource
from dualpath.workload.trace_file import read_trace, write_trace


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_import_round_trip_preserves_prefix_sharing(tmp_path) -> None:
    src = tmp_path / "mooncake.jsonl"
    write_jsonl(src, [
        {"timestamp": 0, "input_length": 1200, "output_length": 10, "hash_ids": [7, 8, 9]},
        {"timestamp": 1500, "input_length": 1100, "output_length": 0, "hash_ids": [7, 8, 42]},
        {"timestamp": 3000, "input_length": 300, "output_length": 5, "hash_ids": [99]},
    ])
    result = import_mooncake(src)
    assert result.num_requests == 3
    a, b, c = result.trajectories
    assert a.turns[0].append_tokens == 1200 and a.turns[0].gen_tokens == 10
    assert b.turns[0].gen_tokens == 1  # output_length 0 -> at least one token
    assert b.arrival_s == pytest.approx(1.5)
    # through our own file format and back
    out = tmp_path / "t.jsonl"
    write_trace(out, result.trajectories)
    a2, b2, c2 = read_trace(out)
    assert (a2, b2, c2) == (a, b, c)
    tokens = TokenSource(49_152, forbidden_ids=range(17), seed=0)
    ta = tokens.turn_append(a2, "agent-a", 0)
    tb = tokens.turn_append(b2, "agent-b", 0)
    tc = tokens.turn_append(c2, "agent-c", 0)
    assert len(ta) == 1200 and len(tb) == 1100 and len(tc) == 300
    assert ta[:1024] == tb[:1024]          # hash ids 7, 8 shared: 2 x 512 tokens
    assert ta[1024:1100] != tb[1024:1100]  # third block differs (9 vs 42)
    assert ta[:300] != tc                  # no shared hash id, no shared prefix
    assert all(17 <= t < 49_152 for t in ta + tb + tc)


def test_session_variant_builds_multi_turn_trajectories(tmp_path) -> None:
    src = tmp_path / "sessions.jsonl"
    write_jsonl(src, [
        {"timestamp": 10, "session_id": "s1", "input_length": 1000, "output_length": 50, "hash_ids": [1, 2]},
        {"timestamp": 20, "session_id": "s2", "input_length": 600, "output_length": 30, "hash_ids": [1]},
        {"timestamp": 40, "session_id": "s1", "input_length": 1250, "output_length": 40, "hash_ids": [1, 2, 3]},
        {"timestamp": 90, "session_id": "s1", "input_length": 900, "output_length": 20, "hash_ids": [1, 2]},
    ])
    trajs, info = load_trajectories(src)
    assert info["format"] == "mooncake-session" and info["adjusted_turns"] == 1
    s1, s2 = trajs
    assert s1.trajectory_id == "session-s1" and s1.arrival_s == pytest.approx(0.01)
    assert [(t.append_tokens, t.gen_tokens) for t in s1.turns] == [(1000, 50), (200, 40), (1, 20)]
    assert s2.num_turns == 1


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"timestamp": 0, "input_length": "x", "output_length": 1}, "input_length"),
        ({"timestamp": -1, "input_length": 5, "output_length": 1}, "timestamp"),
        ({"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": ["a"]}, "hash_ids"),
        ({"timestamp": 0, "input_length": 0, "output_length": 1}, ">= 1"),
    ],
)
def test_bad_lines_report_their_line_number(tmp_path, row, needle) -> None:
    src = tmp_path / "bad.jsonl"
    good = {"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}
    write_jsonl(src, [good, good, row])
    with pytest.raises(TraceFormatError, match=needle) as info:
        import_mooncake(src)
    assert info.value.line == 3


def test_session_line_without_session_id(tmp_path) -> None:
    src = tmp_path / "bad.jsonl"
    write_jsonl(src, [{"timestamp": 0, "session_id": 1, "input_length": 5, "output_length": 1},
                      {"timestamp": 1, "input_length": 5, "output_length": 1}])
    with pytest.raises(TraceFormatError, match="session_id") as info:
        import_mooncake(src)
    assert info.value.line == 2

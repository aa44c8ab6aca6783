"""DualPath trace file: round trip, versioning, malformed lines with their line number."""

from __future__ import annotations

import pytest

from dualpath.core.errors import TraceFormatError, UserInputError
from dualpath.workload.loader import load_trajectories
from dualpath.workload.trace_file import read_trace, write_trace
from dualpath.workload.trajectory import Trajectory, Turn


def test_round_trip(tmp_path) -> None:
    trajs = [
        Trajectory("a", (Turn(10, 2), Turn(3, 4))),
        Trajectory("b", (Turn(700, 1),), arrival_s=1.5, prefix_hash_ids=(1, 2), hash_block_tokens=512),
    ]
    path = tmp_path / "t.jsonl"
    assert write_trace(path, trajs, meta={"x": 1}) == 2
    assert read_trace(path) == trajs
    loaded, info = load_trajectories(path)
    assert loaded == trajs and info["format"] == "dualpath"


HEADER = '{"format": "dualpath-trace", "version": 1}\n'


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        (HEADER + '{"id": "a", "turns": [[1, 2]]}\n{"turns": [[1]]}\n', 3, "append_tokens"),
        (HEADER + "\n" + '{"turns": [[0, 2]]}\n', 3, ">= 1"),
        (HEADER + '{"turns": []}\n', 2, "non-empty"),
        (HEADER + "not json\n", 2, "invalid JSON"),
        (HEADER + '{"turns": [[1, 2]], "arrival_s": "soon"}\n', 2, "arrival_s"),
        ('{"format": "dualpath-trace", "version": 9}\n', 1, "version"),
    ],
)
def test_malformed_lines_name_their_line(tmp_path, body: str, line: int, needle: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(body)
    with pytest.raises(TraceFormatError, match=needle) as info:
        read_trace(path)
    assert info.value.line == line
    assert f"bad.jsonl:{line}:" in str(info.value)


def test_missing_and_empty_files(tmp_path) -> None:
    with pytest.raises(UserInputError, match="cannot read"):
        read_trace(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(TraceFormatError, match="empty"):
        load_trajectories(tmp_path / "e.jsonl")


def test_scale_and_truncate() -> None:
    t = Trajectory("a", (Turn(100, 10), Turn(50, 20), Turn(30, 5)))
    assert t.prompt_tokens() == [100, 160, 210]
    assert t.total_tokens == 215
    s = t.scaled(0.5)
    assert [(x.append_tokens, x.gen_tokens) for x in s.turns] == [(50, 5), (25, 10), (15, 2)]
    cut = t.truncated(180)
    assert cut is not None and cut.num_turns == 2
    assert t.truncated(50) is None

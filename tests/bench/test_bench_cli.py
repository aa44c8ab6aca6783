"""`dualpath trace` / `dualpath bench offline|online|compare` from the command line: one-line
errors (no tracebacks), JSON reports, plots."""

from __future__ import annotations

import importlib.util
import json

import pytest

from dualpath.bench import offline
from dualpath.bench.sim_hook import run_in_simulator
from dualpath.cli.main import main
from dualpath.core.errors import UserInputError
from dualpath.workload.trace_file import write_trace
from dualpath.workload.trajectory import Trajectory, Turn
from dualpath.workload.workload import offline_workload


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    "argv",
    [
        ["trace", "generate", "--max-len", "10k", "--out", "x.jsonl"],
        ["trace", "generate", "--agents", "0", "--out", "x.jsonl"],
        ["trace", "stats", "does-not-exist.jsonl"],
        ["bench", "offline", "--scale", "-1", "--agents", "2"],
        ["bench", "offline", "--max-context", "10", "--agents", "2"],
        ["bench", "offline", "--url", "ftp://x", "--agents", "1"],
        ["bench", "online", "--agents", "2"],
        ["bench", "online", "--aps", "-3"],
        ["bench", "online", "--aps", "1", "--find-capacity", "--slo-target", "2"],
        ["bench", "online", "--aps", "1", "--find-capacity", "--arrivals", "trace"],
        ["bench", "online", "--aps", "1", "--probe-duration", "0", "--find-capacity"],
        ["bench", "compare", "missing-a.json", "missing-b.json"],
    ],
)
def test_impossible_options_give_one_line_errors(argv, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "error:" in err


def test_malformed_trace_file_is_one_line_with_line_number(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "dualpath-trace", "version": 1}\n{"turns": [[1, 2]]}\n{"turns": 5}\n')
    rc, _, err = run_cli(["trace", "stats", str(bad)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "bad.jsonl:3:" in err
    rc, _, err = run_cli(["bench", "offline", "--trace", str(bad), "--no-progress"], capsys)
    assert rc == 2 and "bad.jsonl:3:" in err


def test_generate_then_stats_json(tmp_path, capsys) -> None:
    out = tmp_path / "t.jsonl"
    rc, text, _ = run_cli(["trace", "generate", "--max-len", "32k", "--agents", "50",
                           "--seed", "1", "--out", str(out)], capsys)
    assert rc == 0 and "50 trajectories" in text
    stats_path = tmp_path / "s.json"
    rc, text, _ = run_cli(["trace", "stats", str(out), "--json", str(stats_path)], capsys)
    assert rc == 0 and "context_tokens_mean" in text
    stats = json.loads(stats_path.read_text())
    for key in ("turns_mean", "append_tokens_mean", "gen_tokens_mean", "total_tokens_mean",
                "context_tokens_mean"):
        assert stats[key] > 0
    assert stats["num_trajectories"] == 50


def test_trace_import_command(tmp_path, capsys) -> None:
    src = tmp_path / "m.jsonl"
    src.write_text('{"timestamp": 0, "input_length": 600, "output_length": 3, "hash_ids": [1, 2]}\n')
    rc, text, _ = run_cli(["trace", "import", str(src), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert rc == 0 and "1 requests as 1 trajectories" in text


def test_sim_hook_without_simulator(make_args) -> None:
    args = make_args(offline, ["--target", "sim"])
    wl = offline_workload([Trajectory("a", (Turn(5, 2),))])
    with pytest.raises(UserInputError, match="simulator not available"):
        run_in_simulator(wl, "offline", args, module_name="dualpath.no_such_simulator")
    with pytest.raises(UserInputError, match="simulator not available"):
        run_in_simulator(wl, "offline", args, module_name="dualpath.workload.metrics")


@pytest.mark.skipif(importlib.util.find_spec("dualpath.sim.api") is None,
                    reason="the simulator is not installed")
def test_offline_on_the_simulator(tmp_path, make_args, capsys) -> None:
    args = make_args(offline, ["--target", "sim", "--agents", "3", "--max-len", "32k",
                               "--system", "basic", "--no-progress"])
    report = offline.run(args)
    assert report["target"]["target"] == "sim" and report["num_agents"] == 3
    assert report["num_turns"] > 3 and report["jct_s"] > 0


def test_offline_report_plots_and_compare(tmp_path, fixed_target, virtual_loop, make_args,
                                          capsys) -> None:
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [Trajectory(f"a{i}", (Turn(20, 8), Turn(5, 8), Turn(7, 3))) for i in range(6)])
    reports = []
    for ttft in (0.5, 1.0):
        args = make_args(offline, ["--trace", str(trace), "--no-progress", "--plot",
                                   str(tmp_path / f"plots{ttft}")])
        reports.append(offline.run(args, target=fixed_target(ttft_s=ttft, tpot_s=0.02),
                                   loop_factory=virtual_loop))
    fast, slow = reports
    assert fast["num_agents"] == 6 and fast["num_turns"] == 18
    assert fast["trace"]["format"] == "dualpath"
    assert fast["jct_s"] == pytest.approx(3 * 0.5 + 0.02 * (7 + 7 + 2))
    assert fast["cached_tokens_fraction"] == pytest.approx(0.5, abs=0.02)
    for name in ("jct_cdf.png", "ttft_cdf.png", "tpot_cdf.png", "throughput.png"):
        png = tmp_path / "plots0.5" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(fast))
    b.write_text(json.dumps(slow))
    capsys.readouterr()
    rc, text, _ = run_cli(["bench", "compare", str(a), str(b), "--json", str(tmp_path / "c.json")],
                          capsys)
    assert rc == 0 and "jct_s" in text
    cmp = json.loads((tmp_path / "c.json").read_text())
    assert cmp["fields"]["ttft_s_p50"]["ratio_b_over_a"] == pytest.approx(2.0)
    assert cmp["fields"]["jct_s"]["ratio_b_over_a"] == pytest.approx(slow["jct_s"] / fast["jct_s"])

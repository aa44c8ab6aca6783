"""`dualpath bench frontend` runs end to end (tiny sizes) and reports what it measured."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dualpath.cli.main import main


def test_http_part_reports_throughput_and_added_latency(tmp_path: Path) -> None:
    out = tmp_path / "fe.json"
    assert main(["bench", "frontend", "--requests", "300", "--concurrency", "8",
                 "--latency-requests", "50", "--stream-requests", "20",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["errors"] == 0 and result["requests"] == 300
    assert result["requests_per_s"] > 0
    assert result["latency_s_p50"] > result["direct_latency_s_p50"] > 0
    assert math.isclose(result["added_latency_s_p50"],
                        result["latency_s_p50"] - result["direct_latency_s_p50"])
    assert result["model"] is None
    # 20 streams x 32 tokens, one SSE chunk per token: the token rate is 32 x the request rate.
    assert math.isclose(result["stream_tokens_per_s"], 32 * result["stream_requests_per_s"])


def test_agent_part_against_a_backend_factory(tmp_path: Path) -> None:
    out = tmp_path / "agents.json"
    assert main(["bench", "frontend", "--skip-http",
                 "--backend", "dualpath.server.echo_backend:EchoBackend",
                 "--agents", "1,3", "--turns", "2", "--gen-tokens", "5",
                 "--json", str(out)]) == 0
    model = json.loads(out.read_text())["model"]
    assert model["model"] == "echo"
    runs = {r["agents"]: r for r in model["runs"]}
    assert runs[1]["turns_done"] == 2 and runs[3]["turns_done"] == 6
    for r in runs.values():
        assert r["ttft_s_p50"] > 0 and r["tpot_s_p50"] > 0
        assert 0 < r["cached_tokens_total"] < r["prompt_tokens_total"]  # turn 2 hits

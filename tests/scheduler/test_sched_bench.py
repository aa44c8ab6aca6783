"""`dualpath bench scheduler` at a small size: it runs and writes the named JSON fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_scheduler_small(tmp_path: Path) -> None:
    out = tmp_path / "sched.json"
    subprocess.run(
        [sys.executable, "-m", "dualpath", "bench", "scheduler", "--prefill-nodes", "2",
         "--decode-nodes", "3", "--engines-per-node", "2", "--queue", "200", "--calls", "5",
         "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    data = json.loads(out.read_text())
    assert data["engines"] == 10 and data["groups"] == 5 and data["queue_requests"] == 200
    assert data["calls"] == 5 and data["calls_with_placements"] >= 1
    assert data["decision_us_p50"] > 0 and data["decision_us_p99"] >= data["decision_us_p50"]
    assert data["placed_per_call_mean"] > 0
    assert data["beta_tokens"] == 46_060


def test_bench_scheduler_rejects_bad_sizes() -> None:
    res = subprocess.run([sys.executable, "-m", "dualpath", "bench", "scheduler", "--queue", "0"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "--queue must be >= 1" in res.stderr

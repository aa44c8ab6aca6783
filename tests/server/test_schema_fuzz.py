"""Schema-driven fuzzing of the served OpenAPI schema (schemathesis CLI): no 5xx, schema-invalid
data is refused, statuses, content types and headers are the documented ones.

The schemathesis CLI runs as its own process against a real server on 127.0.0.1 and its
/openapi.json (examples, coverage, fuzzing and stateful phases, fixed seed; the stateful phase
has nothing to chain while the API has no links between operations). Afterwards the server
must still answer and hold no request. (schemathesis' pytest plugin does not support this
pytest version, so the CLI is the entry point.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import start_server

from dualpath.server.echo_backend import EchoBackend

CHECKS = ",".join([
    "not_a_server_error", "negative_data_rejection", "status_code_conformance",
    "content_type_conformance", "response_headers_conformance",
])


def _fuzz(tmp_path: Path, max_examples: int) -> int:
    # A small context so generated max_tokens values hit both the 400 and the generate path.
    srv = start_server(EchoBackend(max_model_len=256, eos_after_tokens=8))
    try:
        st = Path(sys.executable).with_name("st")
        proc = subprocess.run(
            [str(st), "run", srv.url + "/openapi.json", "--checks", CHECKS,
             "--phases", "examples,coverage,fuzzing,stateful",
             "--max-examples", str(max_examples), "--seed", "1", "--no-color",
             "--generation-database", "none", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )
        summary = proc.stdout.split("SUMMARY")[-1]
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        assert "failed" not in summary and "Failures" not in summary, summary
        cases = re.search(r"(\d+) generated", summary)
        assert cases is not None, summary
        status, body = srv.post_json("/v1/completions", {"prompt": "still there?",
                                                         "max_tokens": 3})
        assert status == 200 and body["usage"]["completion_tokens"] == 3
        assert srv.request("GET", "/ready")[0] == 200
        assert srv.state.in_flight == 0
        assert srv.metric("vllm:request_success_total",
                          'finished_reason="error",model_name="echo"') == 0
        return int(cases.group(1))
    finally:
        srv.stop()


def test_fuzzing_finds_no_server_error_and_server_survives(tmp_path: Path) -> None:
    assert _fuzz(tmp_path, max_examples=20) > 300


@pytest.mark.slow
def test_long_fuzzing_finds_no_server_error(tmp_path: Path) -> None:
    assert _fuzz(tmp_path, max_examples=500) > 1000

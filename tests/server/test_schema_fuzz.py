"""Schema-driven fuzzing of the served OpenAPI schema (schemathesis CLI): no 5xx, no crash.

The schemathesis CLI runs as its own process against a real server on 127.0.0.1 and its
/openapi.json (coverage + fuzzing phases, fixed seed); afterwards the server must still answer
and hold no request. (schemathesis' pytest plugin does not support this pytest version, so the
CLI is the entry point.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from server_harness import start_server

from dualpath.server.echo_backend import EchoBackend


def test_fuzzing_finds_no_server_error_and_server_survives(tmp_path: Path) -> None:
    # A small context so generated max_tokens values hit both the 400 and the generate path.
    srv = start_server(EchoBackend(max_model_len=256, eos_after_tokens=8))
    try:
        st = Path(sys.executable).with_name("st")
        proc = subprocess.run(
            [str(st), "run", srv.url + "/openapi.json", "--checks", "not_a_server_error",
             "--max-examples", "40", "--seed", "1", "--no-color",
             "--generation-database", "none", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=500, cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert " passed" in proc.stdout and "failed" not in proc.stdout.split("SUMMARY")[-1]
        status, body = srv.post_json("/v1/completions", {"prompt": "still there?",
                                                         "max_tokens": 3})
        assert status == 200 and body["usage"]["completion_tokens"] == 3
        assert srv.request("GET", "/health")[0] == 200
        assert srv.state.in_flight == 0
        assert srv.metric("vllm:request_success_total",
                          'finished_reason="error",model_name="echo"') == 0
    finally:
        srv.stop()

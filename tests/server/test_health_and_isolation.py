"""Health that tells the truth, metrics that follow the backend, and failures that stay inside
the one request that caused them."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence

import openai
from server_harness import RunningServer

from dualpath.core.requests import GenerateEvent, GenerateRequest
from dualpath.server.backend import BackendMetrics, Readiness
from dualpath.server.echo_backend import EchoBackend
from dualpath.server.tokenizer import ByteTokenizer

Serve = Callable[..., RunningServer]


class _Probe(EchoBackend):
    """An echo backend whose readiness and metrics the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.state = Readiness(True)
        self.engines = {"pe0.0": 3, "de1.0": 5}
        self.restarts = 0
        self.evictions = 0
        self.broken = False

    def readiness(self) -> Readiness:
        if self.broken:
            raise RuntimeError("probe exploded")
        return self.state

    def metrics_snapshot(self) -> BackendMetrics:
        if self.broken:
            raise RuntimeError("snapshot exploded")
        return BackendMetrics(engine_tokens=dict(self.engines), engine_restarts_total=self.restarts,
                              kv_store_evictions_total=self.evictions)


def test_ready_follows_the_backend_and_health_stays_live(serve: Serve) -> None:
    backend = _Probe()
    srv = serve(backend)
    assert srv.request("GET", "/ready")[0] == 200
    backend.state = Readiness(False, ("no decode engine heartbeat for 3.0 s",
                                      "scheduler loop restarting"))
    status, headers, raw = srv.request("GET", "/ready")
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert json.loads(raw) == {"status": "not ready", "reasons": [
        "no decode engine heartbeat for 3.0 s", "scheduler loop restarting"]}
    assert srv.request("GET", "/health")[0] == 200  # alive: do not restart it
    backend.broken = True  # a probe that raises is "not ready", never a 500
    status, _, raw = srv.request("GET", "/ready")
    assert status == 503 and "readiness check failed" in json.loads(raw)["reasons"][0]
    backend.broken = False
    backend.state = Readiness(True)
    assert srv.request("GET", "/ready")[0] == 200


def test_default_readiness_comes_from_is_ready(serve: Serve) -> None:
    class Starting(EchoBackend):
        def is_ready(self) -> bool:
            return False

    srv = serve(Starting())
    status, _, raw = srv.request("GET", "/ready")
    assert status == 503 and json.loads(raw)["reasons"] == ["backend not ready"]


def test_metrics_drop_engines_that_are_gone_and_export_restarts(serve: Serve) -> None:
    backend = _Probe()
    srv = serve(backend)
    assert srv.metric("dualpath_engine_tokens", 'engine="de1.0"') == 5
    backend.engines.pop("de1.0")  # the engine died: the backend stops listing it
    backend.restarts = 2
    backend.evictions = 17
    _, _, raw = srv.request("GET", "/metrics")
    text = raw.decode()
    assert 'engine="de1.0"' not in text and 'dualpath_engine_tokens{engine="pe0.0"} 3.0' in text
    assert srv.metric("dualpath_engine_restarts_total") == 2
    assert srv.metric("dualpath_kv_store_evictions_total") == 17
    backend.broken = True  # a failing snapshot costs the backend gauges, not the endpoint
    status, _, raw = srv.request("GET", "/metrics")
    assert status == 200 and b"vllm:request_success_total" in raw


class _SyncFailure(EchoBackend):
    """generate() of a prompt with an "x" fails before it yields anything (not even a
    generator): like a request the engines cannot encode."""

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateEvent]:
        if 120 in request.prompt_token_ids:
            raise TypeError("cannot encode this request for the engines")
        return super().generate(request)


class _BadDecoder(ByteTokenizer):
    def decode(self, token_ids: Sequence[int]) -> str:
        if 120 in token_ids:  # "x"
            raise UnicodeError("detokenizer bug")
        return super().decode(token_ids)


def _no_request_held(srv: RunningServer) -> bool:
    """Every admission slot given back (a stream releases its slot just after its last byte,
    so allow the server a moment)."""
    deadline = time.monotonic() + 10
    while srv.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    return srv.state.in_flight == 0


def _survives(srv: RunningServer) -> None:
    assert _no_request_held(srv)
    status, body = srv.post_json("/v1/completions", {"prompt": [1, 2], "max_tokens": 2})
    assert status == 200 and body["usage"]["completion_tokens"] == 2


def test_a_backend_that_fails_synchronously_fails_that_request_only(serve: Serve) -> None:
    srv = serve(_SyncFailure(), max_running=1, max_queue=0)
    for _ in range(3):  # with one slot, a leaked slot would turn the next one into a 429
        status, body = srv.post_json("/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 500 and body["error"]["type"] == "server_error"
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
        with contextlib.suppress(openai.APIError):
            list(c.completions.create(model="echo", prompt="x", max_tokens=2, stream=True))
        assert _no_request_held(srv)
    _survives(srv)
    assert srv.request("GET", "/ready")[0] == 200


def test_a_detokenizer_failure_is_a_500_or_an_in_band_stream_error(serve: Serve) -> None:
    backend = EchoBackend(tokenizer=_BadDecoder())
    srv = serve(backend, max_running=1, max_queue=0)
    # The echo engine's greedy output for this prompt contains an "x" within 40 tokens.
    prompt = "trigger"
    status, body = srv.post_json("/v1/completions", {"prompt": prompt, "max_tokens": 200,
                                                     "temperature": 0})
    assert status == 500 and "UnicodeError" in body["error"]["message"]
    status, _, raw = srv.request("POST", "/v1/completions", {
        "prompt": prompt, "max_tokens": 200, "temperature": 0, "stream": True})
    assert status == 200
    events = [line for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    assert json.loads(events[-2][6:])["error"]["type"] == "server_error"
    assert len(backend.aborted_ids) == 2  # the engine side was stopped both times
    _survives(srv)


def test_a_large_valid_body_is_served(serve: Serve) -> None:
    """Bodies over 1 MiB are parsed on a worker thread; the answer is the same."""
    srv = serve(EchoBackend(max_model_len=2_000_000, buffer_bytes_per_token=1))
    status, body = srv.post_json("/v1/completions", {"prompt": "y" * 1_500_000, "max_tokens": 2})
    assert status == 200 and body["usage"]["prompt_tokens"] == 1_500_000
    status, body = srv.post_json("/v1/completions", {"prompt": "y" * 1_500_000, "max_tokens": 0})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    _survives(srv)

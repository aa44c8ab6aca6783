"""/metrics: every documented family is exposed with its type, and the values add up."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from server_harness import RunningServer

from dualpath.server.echo_backend import EchoBackend

Serve = Callable[..., RunningServer]

# name (as parsed: counters without _total) -> type; the README's metric table lists these.
DOCUMENTED = {
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:request_success": "counter",
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "dualpath_prefix_cache_hit_rate": "gauge",
    "dualpath_requests_rejected": "counter",
    "dualpath_admission_in_flight": "gauge",
    "dualpath_bytes_read": "counter",
    "dualpath_nic_utilization_ratio": "gauge",
    "dualpath_storage_read_queue_tokens": "gauge",
    "dualpath_engine_tokens": "gauge",
    "dualpath_engine_sequences": "gauge",
    "dualpath_buffer_bytes_in_use": "gauge",
}


def scrape(srv: RunningServer) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    status, headers, raw = srv.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for fam in text_string_to_metric_families(raw.decode()):
        assert fam.type == DOCUMENTED.get(fam.name, fam.type), fam.name
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return out


def test_documented_metrics_exposed_and_consistent(serve: Serve) -> None:
    srv = serve(EchoBackend(block_tokens=8, buffer_bytes_per_token=10))
    families = scrape(srv)
    assert set(DOCUMENTED) <= set(families)
    prompt = "a fairly long shared prefix for two turns"  # 41 byte tokens
    for _ in range(2):
        status, body = srv.post_json("/v1/completions", {"prompt": prompt, "max_tokens": 4,
                                                         "temperature": 0})
        assert status == 200
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 40
    fam = scrape(srv)
    m = (("model_name", "echo"),)
    assert fam["vllm:prompt_tokens"][("vllm:prompt_tokens_total", m)] == 82
    assert fam["vllm:generation_tokens"][("vllm:generation_tokens_total", m)] == 8
    assert fam["vllm:prefix_cache_queries"][("vllm:prefix_cache_queries_total", m)] == 82
    assert fam["vllm:prefix_cache_hits"][("vllm:prefix_cache_hits_total", m)] == 40
    assert fam["dualpath_prefix_cache_hit_rate"][("dualpath_prefix_cache_hit_rate", ())] == 40 / 82
    e2e = fam["vllm:e2e_request_latency_seconds"]
    assert e2e[("vllm:e2e_request_latency_seconds_count", m)] == 2
    assert e2e[("vllm:e2e_request_latency_seconds_bucket", (("le", "+Inf"), *m))] == 2
    itl = fam["vllm:inter_token_latency_seconds"]
    assert itl[("vllm:inter_token_latency_seconds_count", m)] == 6  # 3 gaps per request
    success = fam["vllm:request_success"]
    assert success[("vllm:request_success_total", (("finished_reason", "length"), *m))] == 2
    read = fam["dualpath_bytes_read"]
    assert read[("dualpath_bytes_read_total", (("path", "pe"),))] == 40 * 10
    assert fam["vllm:num_requests_running"][("vllm:num_requests_running", m)] == 0

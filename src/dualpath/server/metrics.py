"""Prometheus metrics of one app: vLLM's names where they apply, `dualpath_*` for the rest.

Each `ServerMetrics` owns its own `CollectorRegistry` (not the process-global default), so tests
can build several apps in one process. Request-level metrics are recorded by the handlers;
gauges that describe current state (queues, NICs, engines, buffers) are read at scrape time
from the admission queue and `Backend.metrics_snapshot()`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dualpath.server.admission import Admission
from dualpath.server.backend import Backend

# Bucket edges follow vLLM's (vllm/v1/metrics/loggers.py), with finer low edges for the
# millisecond latencies of small models on CPU.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
                20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000,
                  50000, 100000, 200000, 500000, 1000000)

FINISH_REASONS = ("stop", "length", "abort", "error")
REJECT_REASONS = ("invalid", "auth", "queue_full", "draining")


class ServerMetrics:
    """Request-level metrics (recorded by handlers) plus a scrape-time collector."""

    def __init__(self, model_name: str, admission: Admission, backend: Backend) -> None:
        # `*_created` series only add noise for scrapers; vLLM turns them off too (global).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        m = [model_name]
        self.ttft_s = Histogram("vllm:time_to_first_token_seconds", "Time to first token (s)",
                                ["model_name"], registry=r, buckets=_TTFT_BUCKETS).labels(*m)
        self.itl_s = Histogram("vllm:inter_token_latency_seconds", "Time between consecutive output tokens (s)",
                               ["model_name"], registry=r, buckets=_ITL_BUCKETS).labels(*m)
        self.tpot_s = Histogram("vllm:time_per_output_token_seconds",
                                "Per request: (e2e - ttft) / (output tokens - 1) (s)",
                                ["model_name"], registry=r, buckets=_ITL_BUCKETS).labels(*m)
        self.e2e_s = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency (s)",
                               ["model_name"], registry=r, buckets=_E2E_BUCKETS).labels(*m)
        self.queue_s = Histogram("vllm:request_queue_time_seconds",
                                 "Time spent waiting in the admission queue (s)",
                                 ["model_name"], registry=r, buckets=_TTFT_BUCKETS).labels(*m)
        self.prompt_len = Histogram("vllm:request_prompt_tokens", "Prompt tokens per request",
                                    ["model_name"], registry=r, buckets=_TOKEN_BUCKETS).labels(*m)
        self.gen_len = Histogram("vllm:request_generation_tokens", "Generated tokens per request",
                                 ["model_name"], registry=r, buckets=_TOKEN_BUCKETS).labels(*m)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens of finished requests",
                                     ["model_name"], registry=r).labels(*m)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens",
                                         ["model_name"], registry=r).labels(*m)
        self.prefix_queries = Counter("vllm:prefix_cache_queries",
                                      "Prompt tokens looked up in the KV store",
                                      ["model_name"], registry=r).labels(*m)
        self.prefix_hits = Counter("vllm:prefix_cache_hits",
                                   "Prompt tokens whose KV came from the KV store",
                                   ["model_name"], registry=r).labels(*m)
        success = Counter("vllm:request_success", "Finished requests by finish reason",
                          ["model_name", "finished_reason"], registry=r)
        self.finished = {f: success.labels(model_name, f) for f in FINISH_REASONS}
        rejected = Counter("dualpath_requests_rejected", "Requests refused before generation",
                           ["reason"], registry=r)
        self.rejected = {reason: rejected.labels(reason) for reason in REJECT_REASONS}
        self._queried_tokens = 0
        self._hit_tokens = 0
        r.register(_StateCollector(self, admission, backend, model_name))

    def record_finish(
        self, *, finish_reason: str, prompt_tokens: int, completion_tokens: int,
        cached_tokens: int, ttft_s: float | None, e2e_s: float,
    ) -> None:
        """One request ended (any reason). Called once per admitted request."""
        self.finished.get(finish_reason, self.finished["error"]).inc()
        self.e2e_s.observe(e2e_s)
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.prompt_len.observe(prompt_tokens)
        self.gen_len.observe(completion_tokens)
        if finish_reason != "abort" or cached_tokens:
            self.prefix_queries.inc(prompt_tokens)
            self.prefix_hits.inc(cached_tokens)
            self._queried_tokens += prompt_tokens
            self._hit_tokens += cached_tokens
        if ttft_s is not None and completion_tokens > 1:
            self.tpot_s.observe((e2e_s - ttft_s) / (completion_tokens - 1))

    def hit_rate(self) -> float:
        return self._hit_tokens / self._queried_tokens if self._queried_tokens else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Scrape-time gauges: queue lengths from the server, DualPath state from the backend."""

    def __init__(self, metrics: ServerMetrics, admission: Admission, backend: Backend,
                 model_name: str) -> None:
        self._metrics = metrics
        self._admission = admission
        self._backend = backend
        self._model = model_name

    def describe(self) -> list[Metric]:
        return []  # dynamic label sets: nothing to pre-declare

    def collect(self) -> Iterator[Metric]:
        snap = self._backend.metrics_snapshot()
        adm = self._admission
        running = snap.num_running if snap.num_running is not None else adm.running
        waiting = adm.waiting + (snap.num_waiting or 0)
        yield _gauge("vllm:num_requests_running", "Requests being prefilled or decoded",
                     ["model_name"], [([self._model], running)])
        yield _gauge("vllm:num_requests_waiting",
                     "Requests waiting (admission queue + scheduler queue)",
                     ["model_name"], [([self._model], waiting)])
        yield _gauge("dualpath_admission_in_flight", "Requests admitted by the HTTP server",
                     [], [([], adm.running)])
        yield _gauge("dualpath_prefix_cache_hit_rate",
                     "Cumulative prefix_cache_hits / prefix_cache_queries (tokens)",
                     [], [([], self._metrics.hit_rate())])
        c = CounterMetricFamily("dualpath_bytes_read", "KV bytes read from storage per read path",
                                labels=["path"])
        for path, value in sorted(snap.bytes_read_total.items()):
            c.add_metric([path], value)
        yield c
        yield _gauge("dualpath_nic_utilization_ratio",
                     "Busy fraction of a NIC per traffic class over the last interval",
                     ["nic", "class"],
                     [([nic, cls], v) for (nic, cls), v in sorted(snap.nic_utilization.items())])
        yield _gauge("dualpath_storage_read_queue_tokens", "Tokens waiting to be read from storage",
                     ["node"], [([k], v) for k, v in sorted(snap.read_queue_tokens.items())])
        yield _gauge("dualpath_engine_tokens", "tok_e: total tokens of the engine's unfinished requests",
                     ["engine"], [([k], v) for k, v in sorted(snap.engine_tokens.items())])
        yield _gauge("dualpath_engine_sequences", "seq_e: unfinished requests assigned to the engine",
                     ["engine"], [([k], v) for k, v in sorted(snap.engine_seqs.items())])
        yield _gauge("dualpath_buffer_bytes_in_use", "Host DRAM KV buffer bytes held by requests",
                     ["node"], [([k], v) for k, v in sorted(snap.buffer_bytes_in_use.items())])
        if snap.kv_store_bytes is not None:
            yield _gauge("dualpath_kv_store_bytes", "Bytes persisted in the KV store", [],
                         [([], snap.kv_store_bytes)])


def _gauge(name: str, doc: str, labels: list[str],
           samples: list[tuple[list[str], float]]) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    for values, v in samples:
        g.add_metric(values, float(v))
    return g

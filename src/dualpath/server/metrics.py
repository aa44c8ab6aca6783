"""Prometheus metrics of one app: vLLM's names where they apply, `dualpath_*` for the rest.

Each `ServerMetrics` is a collector in its own `CollectorRegistry` (not the process-global
default), so tests can build several apps in one process. Request-level metrics are plain
counters and bucket arrays updated by the handlers: every update and every scrape runs on the
server's one event loop, so they need no locks, which keeps the per-request cost to a few
additions (prometheus_client's own instruments take a lock per update). Gauges that describe
current state (queues, NICs, engines, buffers) are read at scrape time from the admission
queue and `Backend.metrics_snapshot()`.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dualpath.server.admission import Admission
from dualpath.server.backend import Backend, BackendMetrics

logger = logging.getLogger(__name__)

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


class Histogram:
    """Cumulative-bucket histogram without locks (event-loop thread only). Mutates on observe."""

    __slots__ = ("_counts", "_edges", "count", "sum")

    def __init__(self, edges: tuple[float, ...]) -> None:
        self._edges = edges
        self._counts = [0] * (len(edges) + 1)  # last slot: above the largest edge
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._edges, value)] += 1
        self.count += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for edge, n in zip(self._edges, self._counts, strict=False):
            running += n
            out.append((repr(float(edge)), running))
        out.append(("+Inf", self.count))
        return out


class ServerMetrics(Collector):
    """Request-level metrics (recorded by handlers) and scrape-time state, as one collector."""

    def __init__(self, model_name: str, admission: Admission, backend: Backend) -> None:
        self.model_name = model_name
        self._admission = admission
        self._backend = backend
        self.ttft_s = Histogram(_TTFT_BUCKETS)
        self.itl_s = Histogram(_ITL_BUCKETS)
        self.tpot_s = Histogram(_ITL_BUCKETS)
        self.e2e_s = Histogram(_E2E_BUCKETS)
        self.queue_s = Histogram(_TTFT_BUCKETS)
        self.prompt_len = Histogram(_TOKEN_BUCKETS)
        self.gen_len = Histogram(_TOKEN_BUCKETS)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.finished = dict.fromkeys(FINISH_REASONS, 0)
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def record_finish(
        self, *, finish_reason: str, prompt_tokens: int, completion_tokens: int,
        cached_tokens: int, ttft_s: float | None, e2e_s: float,
    ) -> None:
        """One admitted request ended (any reason). Called once per request."""
        reason = finish_reason if finish_reason in self.finished else "error"
        self.finished[reason] += 1
        self.e2e_s.observe(e2e_s)
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += completion_tokens
        self.prompt_len.observe(prompt_tokens)
        self.gen_len.observe(completion_tokens)
        if finish_reason != "abort" or cached_tokens:
            self.prefix_queries += prompt_tokens
            self.prefix_hits += cached_tokens
        if ttft_s is not None and completion_tokens > 1:
            self.tpot_s.observe((e2e_s - ttft_s) / (completion_tokens - 1))

    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def describe(self) -> list[Metric]:
        return []  # label sets are dynamic: nothing to pre-declare

    def collect(self) -> Iterator[Metric]:
        m = [self.model_name]
        for name, doc, hist in (
            ("vllm:time_to_first_token_seconds", "Time to first token (s)", self.ttft_s),
            ("vllm:inter_token_latency_seconds", "Time between consecutive output tokens (s)",
             self.itl_s),
            ("vllm:time_per_output_token_seconds",
             "Per request: (e2e - ttft) / (output tokens - 1) (s)", self.tpot_s),
            ("vllm:e2e_request_latency_seconds", "End-to-end request latency (s)", self.e2e_s),
            ("vllm:request_queue_time_seconds", "Time spent waiting in the admission queue (s)",
             self.queue_s),
            ("vllm:request_prompt_tokens", "Prompt tokens per request", self.prompt_len),
            ("vllm:request_generation_tokens", "Generated tokens per request", self.gen_len),
        ):
            h = HistogramMetricFamily(name, doc, labels=["model_name"])
            h.add_metric(m, hist.buckets(), hist.sum)
            yield h
        for name, doc, value in (
            ("vllm:prompt_tokens", "Prompt tokens of finished requests", self.prompt_tokens),
            ("vllm:generation_tokens", "Generated tokens", self.generation_tokens),
            ("vllm:prefix_cache_queries", "Prompt tokens looked up in the KV store",
             self.prefix_queries),
            ("vllm:prefix_cache_hits", "Prompt tokens whose KV came from the KV store",
             self.prefix_hits),
        ):
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(m, value)
            yield c
        c = CounterMetricFamily("vllm:request_success", "Finished requests by finish reason",
                                labels=["model_name", "finished_reason"])
        for reason, n in self.finished.items():
            c.add_metric([self.model_name, reason], n)
        yield c
        c = CounterMetricFamily("dualpath_requests_rejected",
                                "Requests refused before generation", labels=["reason"])
        for reason, n in self.rejected.items():
            c.add_metric([reason], n)
        yield c
        yield from self._state(m)

    def _state(self, m: list[str]) -> Iterator[Metric]:
        try:
            snap = self._backend.metrics_snapshot()
        except Exception as exc:  # a failing snapshot must not take /metrics down
            logger.warning("backend metrics snapshot failed: %s: %s", type(exc).__name__, exc)
            snap = BackendMetrics()
        adm = self._admission
        running = snap.num_running if snap.num_running is not None else adm.running
        waiting = adm.waiting + (snap.num_waiting or 0)
        yield _gauge("vllm:num_requests_running", "Requests being prefilled or decoded",
                     ["model_name"], [(m, running)])
        yield _gauge("vllm:num_requests_waiting",
                     "Requests waiting (admission queue + scheduler queue)",
                     ["model_name"], [(m, waiting)])
        yield _gauge("dualpath_admission_in_flight", "Requests admitted by the HTTP server",
                     [], [([], adm.running)])
        yield _gauge("dualpath_prefix_cache_hit_rate",
                     "Cumulative prefix_cache_hits / prefix_cache_queries (tokens)",
                     [], [([], self.hit_rate())])
        c = CounterMetricFamily("dualpath_bytes_read", "KV bytes read from storage per read path",
                                labels=["path"])
        for path, value in sorted(snap.bytes_read_total.items()):
            c.add_metric([path], value)
        yield c
        c = CounterMetricFamily("dualpath_internal_frames_rejected",
                                "Internal-plane frames dropped by a validating decoder",
                                labels=["reason"])
        for reason, value in sorted(snap.internal_frames_rejected.items()):
            c.add_metric([reason], value)
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
        for name, doc, total in (
            ("dualpath_kv_store_evictions", "KV blocks evicted to keep the store under its cap",
             snap.kv_store_evictions_total),
            ("dualpath_engine_restarts", "Engine processes restarted after they died",
             snap.engine_restarts_total),
        ):
            if total is not None:
                c = CounterMetricFamily(name, doc, labels=[])
                c.add_metric([], total)
                yield c


def _gauge(name: str, doc: str, labels: list[str],
           samples: list[tuple[list[str], float]]) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    for values, v in samples:
        g.add_metric(values, float(v))
    return g

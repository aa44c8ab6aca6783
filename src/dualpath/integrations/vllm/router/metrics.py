"""The router's `/metrics`: Prometheus text in DualPath's metric names (README's table).

From the router's books (what the scheduler sees) and the instances' connector statistics
files (what really moved):

| metric | meaning |
|---|---|
| `dualpath_bytes_read_total{path}` | KV bytes read from storage on the PE (`pe`) / DE (`de`) read path |
| `dualpath_storage_read_queue_tokens{node}` | the scheduler's `read_q` of each node |
| `dualpath_engine_tokens{engine}` / `dualpath_engine_sequences{engine}` | `tok_e` / `seq_e` per instance |
| `dualpath_relay_bytes_total{kind}` | `hit` (D -> P, DE path) and `kv` (P -> D) bytes |
| `dualpath_kv_blocks_persisted_total` | Full Blocks the decode instances wrote |
| `dualpath_relay_failures_total` | relays given up (the request was recomputed) |
| `dualpath_router_requests_total{read_side}` | requests placed per read side |
| `dualpath_router_fallbacks_total` | requests re-sent to D alone after their prefill failed |
| `dualpath_router_waiting_requests` | requests waiting for a placement |
| `vllm:prompt_tokens_total`, `vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total` | prompt tokens placed / looked up / found in the store |
"""

from __future__ import annotations

from collections.abc import Mapping

from dualpath.integrations.vllm.router.placement import Planner


def _line(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


def render_metrics(planner: Planner, stats: Mapping[str, Mapping[str, float]],
                   fallbacks: int) -> str:
    def total(counter: str) -> float:
        return sum(s.get(counter, 0.0) for s in stats.values())

    out: list[str] = []

    def family(name: str, kind: str, help_: str, lines: list[str]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)

    family("dualpath_bytes_read_total", "counter", "KV bytes read from storage per read path",
           [_line("dualpath_bytes_read_total", total("bytes_read_pe_path"), {"path": "pe"}),
            _line("dualpath_bytes_read_total", total("bytes_read_de_path"), {"path": "de"})])
    family("dualpath_storage_read_queue_tokens", "gauge", "tokens to read from storage per node",
           [_line("dualpath_storage_read_queue_tokens", q, {"node": str(n)})
            for n, q in sorted(planner.books.read_queue.items())])
    engines = planner.books.engines
    family("dualpath_engine_tokens", "gauge", "tok_e: tokens of unfinished requests",
           [_line("dualpath_engine_tokens", e.tok, {"engine": e.info.name}) for e in engines])
    family("dualpath_engine_sequences", "gauge", "seq_e: unfinished requests",
           [_line("dualpath_engine_sequences", e.seq, {"engine": e.info.name}) for e in engines])
    family("dualpath_relay_bytes_total", "counter", "KV bytes relayed between instances",
           [_line("dualpath_relay_bytes_total", total("hit_bytes_relayed"), {"kind": "hit"}),
            _line("dualpath_relay_bytes_total", total("kv_bytes_sent"), {"kind": "kv"})])
    family("dualpath_kv_blocks_persisted_total", "counter", "Full Blocks written by decode",
           [_line("dualpath_kv_blocks_persisted_total", total("blocks_persisted"))])
    family("dualpath_relay_failures_total", "counter", "relays given up (recomputed)",
           [_line("dualpath_relay_failures_total", total("relays_failed"))])
    family("dualpath_router_requests_total", "counter", "requests placed per read side",
           [_line("dualpath_router_requests_total", n, {"read_side": side})
            for side, n in sorted(planner.by_side.items())])
    family("dualpath_router_fallbacks_total", "counter", "requests D recomputed alone",
           [_line("dualpath_router_fallbacks_total", fallbacks)])
    family("dualpath_router_waiting_requests", "gauge", "requests waiting for a placement",
           [_line("dualpath_router_waiting_requests", planner.waiting)])
    family("vllm:prompt_tokens_total", "counter", "prompt tokens of placed requests",
           [_line("vllm:prompt_tokens_total", planner.prompt_tokens_total)])
    family("vllm:prefix_cache_queries_total", "counter", "prompt tokens looked up in the store",
           [_line("vllm:prefix_cache_queries_total", planner.prompt_tokens_total)])
    family("vllm:prefix_cache_hits_total", "counter", "prompt tokens found in the store",
           [_line("vllm:prefix_cache_hits_total", planner.hit_tokens_total)])
    return "\n".join(out) + "\n"

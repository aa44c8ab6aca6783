"""`dualpath bench store --store redis://...`: RedisKVStore against the raw Redis client.

The same Full Blocks (SmolLM2 geometry) are written and read twice against one server: once
through `RedisKVStore` (block-file header + per-layer CRC-32s in each value, every read
verified, `pipeline_blocks` blocks per round trip on `io_threads` connections) and once raw:
redis-py `SET`/`GET`/`GETRANGE` of payload-only values with the same pipelining and the same
connections, copied into the same destination buffer (what an engine must do at least). The
ratio is what our layer costs over the server's own throughput on this link. Also measured:
`longest_prefix` of a 100-block prompt against a raw pipelined `EXISTS` of the same keys.

`--start-redis` runs a throwaway local redis-server (AOF everysec, the recommended config) so
the benchmark needs no setup. Keys go under a fresh prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import redis

from dualpath.bench.report import format_table, machine_info
from dualpath.kv import BlockGeometry, block_hashes
from dualpath.kv.redis_server import RedisServerConfig, RedisServerProcess, free_port
from dualpath.kv.redis_store import RedisKVStore

_POOL_BLOCKS = 4
_PREFIX_BLOCKS = 100


@contextmanager
def _server(args: argparse.Namespace) -> Iterator[str]:
    if not args.start_redis:
        yield args.store
        return
    with tempfile.TemporaryDirectory(prefix="dualpath-bench-redis-") as tmp:
        cfg = RedisServerConfig(dir=Path(tmp), port=free_port(), appendonly=True, appendfsync="everysec")
        with RedisServerProcess(cfg) as server:
            yield server.url


def run(args: argparse.Namespace, sizes: list[int], bptpl: int, layers: int) -> dict[str, Any]:
    with _server(args) as url:
        prefix = f"dualpath-bench-{uuid.uuid4().hex[:8]}"
        sep = "&" if "?" in url else "?"
        store_url = f"{url}{sep}prefix={prefix}"
        raw = redis.Redis(connection_pool=redis.ConnectionPool.from_url(
            url, socket_read_size=1 << 20, socket_timeout=60))
        results: dict[str, Any] = {}
        try:
            for tokens in sizes:
                g = BlockGeometry(layers, tokens, bptpl)
                nblocks = max(1, int(args.total_mib * 2**20) // g.full_block_bytes)
                results[str(tokens)] = _measure(store_url, raw, prefix, g, nblocks, args)
            info = RedisKVStore(store_url, BlockGeometry(layers, sizes[0], bptpl)).server_info()
        finally:
            _delete_prefix(raw, prefix)
            raw.close()
    primary = results[str(sizes[0])]
    rows = [(t, r["num_blocks"], r["block_bytes"], r["store_write_bytes_s"] / 1e6,
             r["raw_write_bytes_s"] / 1e6, r["write_efficiency"], r["store_read_bytes_s"] / 1e6,
             r["raw_read_bytes_s"] / 1e6, r["read_efficiency"], r["store_get_layer_bytes_s"] / 1e6,
             r["get_layer_efficiency"], r["store_prefix_check_s"] * 1e3) for t, r in results.items()]
    print(format_table(["tokens", "blocks", "block_B", "st_wr_MB/s", "raw_wr_MB/s", "wr_eff",
                        "st_rd_MB/s", "raw_rd_MB/s", "rd_eff", "layer_MB/s", "layer_eff",
                        "prefix100_ms"], rows))
    return {
        "benchmark": "store",
        "backend": "redis",
        "store": RedisKVStore.__name__,
        "url": _redact(url),
        "started_server": bool(args.start_redis),
        "server": info,
        "read_efficiency": primary["read_efficiency"],
        "write_efficiency": primary["write_efficiency"],
        "get_layer_bytes_s": primary["store_get_layer_bytes_s"],
        "get_layer_efficiency": primary["get_layer_efficiency"],
        "prefix_check_s": primary["store_prefix_check_s"],
        "primary_block_tokens": sizes[0],
        "io_threads": args.io_threads,
        "pipeline_blocks": args.pipeline_blocks,
        "repeats": args.repeats,
        "sizes": results,
        "machine": machine_info(),
    }


def _measure(store_url: str, raw: redis.Redis, prefix: str, g: BlockGeometry, nblocks: int,
             args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, g.full_block_shape, dtype=np.uint8) for _ in range(_POOL_BLOCKS)]
    hashes = block_hashes(rng.integers(0, 49152, nblocks * g.block_tokens), g.block_tokens, "store-bench")
    items = [(h, pool[i % len(pool)]) for i, h in enumerate(hashes)]
    dest = g.empty_full_block()[None].repeat(nblocks, axis=0)
    dest.fill(1)
    threads, per_trip = args.io_threads, args.pipeline_blocks
    samples: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        store = RedisKVStore(store_url, g, io_threads=threads, pipeline_blocks=per_trip)
        raw_keys = [f"{prefix}:raw:{rep}:{h}" for h in hashes]
        _one_repeat(store, _RawRedis(raw, threads, per_trip), items, raw_keys, dest, g, rep, samples)
        store.close()
        _delete_prefix(raw, prefix)
    r: dict[str, Any] = {k: statistics.median(v) for k, v in samples.items()}
    for eff, num, den in (("read_efficiency", "store_read", "raw_read"),
                          ("write_efficiency", "store_write", "raw_write"),
                          ("get_layer_efficiency", "store_get_layer", "raw_get_layer")):
        ratios = [a / b for a, b in zip(samples[f"{num}_bytes_s"], samples[f"{den}_bytes_s"], strict=True)]
        r[eff] = statistics.median(ratios)
    r.update(num_blocks=nblocks, block_bytes=g.full_block_bytes,
             total_bytes=nblocks * g.full_block_bytes, samples=samples)
    return r


def _one_repeat(store: RedisKVStore, raw_io: _RawRedis, items: list[tuple[str, np.ndarray]],
                raw_keys: list[str], dest: np.ndarray, g: BlockGeometry, rep: int,
                samples: dict[str, list[float]]) -> None:
    hashes = [h for h, _ in items]
    nbytes = len(items) * g.full_block_bytes
    phases: list[tuple[str, Callable[[], object]]] = [
        ("store_write", partial(store.put_many, items)),
        ("raw_write", partial(raw_io.put, raw_keys, [b for _, b in items])),
        ("store_read", lambda: _check(store.get_many(hashes, list(dest)))),
        ("raw_read", partial(raw_io.get, raw_keys, dest)),
        ("store_get_layer", partial(_store_layers, store, hashes, g)),
        ("raw_get_layer", partial(raw_io.layers, raw_keys, g)),
    ]
    for i in range(0, len(phases), 2):  # store and raw back to back, order alternating
        pair = phases[i : i + 2] if rep % 2 == 0 else phases[i : i + 2][::-1]
        for name, fn in pair:
            samples.setdefault(f"{name}_bytes_s", []).append(nbytes / _timed(fn))
    n = _PREFIX_BLOCKS // len(hashes) + 1
    chain = (hashes * n)[:_PREFIX_BLOCKS]
    raw_chain = (raw_keys * n)[:_PREFIX_BLOCKS]
    samples.setdefault("store_prefix_check_s", []).append(
        statistics.median(_timed(partial(store.longest_prefix, chain)) for _ in range(20)))
    samples.setdefault("raw_prefix_check_s", []).append(
        statistics.median(_timed(partial(raw_io.exists, raw_chain)) for _ in range(20)))
    if store.stats().corrupt_blocks:
        raise RuntimeError("store bench: corrupt blocks on read-back")


class _RawRedis:
    """The baseline: the same client library, pipelining and connections, no DualPath layer."""

    def __init__(self, client: redis.Redis, threads: int, per_trip: int) -> None:
        self.client, self.threads, self.per_trip = client, threads, per_trip

    def _rounds(self, n: int, fn: Callable[[range], None]) -> None:
        chunks = [range(i, min(n, i + self.per_trip)) for i in range(0, n, self.per_trip)]
        with ThreadPoolExecutor(self.threads) as ex:
            list(ex.map(fn, chunks))

    def put(self, keys: list[str], blocks: list[np.ndarray]) -> None:
        def one(idx: range) -> None:
            pipe = self.client.pipeline(transaction=False)
            for i in idx:
                pipe.set(keys[i], blocks[i].data.cast("B"), nx=True)
            pipe.execute()
        self._rounds(len(keys), one)

    def get(self, keys: list[str], dest: np.ndarray) -> None:
        def one(idx: range) -> None:
            pipe = self.client.pipeline(transaction=False)
            for i in idx:
                pipe.get(keys[i])
            for i, raw in zip(idx, pipe.execute(), strict=True):
                np.copyto(dest[i].reshape(-1), np.frombuffer(raw, np.uint8))
        self._rounds(len(keys), one)

    def layers(self, keys: list[str], g: BlockGeometry) -> None:
        outs = [g.empty_layer_block() for _ in keys]
        size = g.layer_block_bytes
        for layer in range(g.num_layers):
            def one(idx: range, layer: int = layer) -> None:
                pipe = self.client.pipeline(transaction=False)
                for i in idx:
                    pipe.getrange(keys[i], layer * size, (layer + 1) * size - 1)
                for i, raw in zip(idx, pipe.execute(), strict=True):
                    np.copyto(outs[i].reshape(-1), np.frombuffer(raw, np.uint8))
            self._rounds(len(keys), one)

    def exists(self, keys: list[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.exists(k)
        pipe.execute()


def _store_layers(store: RedisKVStore, hashes: list[str], g: BlockGeometry) -> None:
    outs = [g.empty_layer_block() for _ in hashes]
    for layer in range(g.num_layers):
        _check(store.get_layer_many(hashes, layer, outs))


def _check(got: list[np.ndarray | None]) -> None:
    if any(b is None for b in got):
        raise RuntimeError("store bench: a block went missing on read-back (evicted? see maxmemory)")


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def _redact(url: str) -> str:
    from dualpath.kv.redis_url import redacted

    return redacted(url)

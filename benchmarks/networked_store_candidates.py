"""Measure the two candidate networked KV stores with one workload (docs/decisions/networked-kv-store.md).

    .venv/bin/python benchmarks/networked_store_candidates.py redis    [--json PATH]
    .venv/bin/python benchmarks/networked_store_candidates.py mooncake [--json PATH]

Each run starts its own servers on 127.0.0.1 in a temp dir (redis-server; or mooncake_master
with its HTTP metadata server plus one storage-owner process contributing the memory segment,
the "standalone store" deployment), stores SmolLM2-geometry Full Blocks as DualPath would
(block_file header + per-layer CRCs + payload in one value), and measures, through the raw
client library (no DualPath verification):

- put and get of whole values (`blocks` of them), one client, one request at a time;
- batched get (Redis pipeline / Mooncake batch_get_into) of all blocks;
- one Layer Block per block (Redis GETRANGE of header + layer in one pipeline; Mooncake
  get_into_ranges of the same two ranges);
- a 100-block prefix existence check (60 stored, 40 not): median latency;
- `clients` processes reading all blocks at once: aggregate bytes/s.

Not a test (speed lives here); prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dualpath.kv import BlockGeometry, block_file, block_hashes
from dualpath.kv.redis_server import RedisServerConfig, RedisServerProcess, free_port

GEOMETRY = BlockGeometry(30, 64, 1536)  # SmolLM2-135M, float32 KV: 2.95 MB per Full Block
LAYER = 7
_READ_SIZE = 1 << 20  # what RedisKVStore uses: 1 MiB per recv instead of redis-py's 64 KiB


def _values(n: int) -> tuple[list[str], list[bytes]]:
    rng = np.random.default_rng(0)
    hashes = block_hashes(rng.integers(0, 49152, n * 64), 64, "candidates")
    values = []
    for h in hashes:
        block = rng.integers(0, 256, GEOMETRY.full_block_shape, dtype=np.uint8)
        header = block_file.encode_header(h, GEOMETRY, block_file.layer_checksums(block, GEOMETRY))
        values.append(header + block.tobytes())
    return hashes, values


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _median_rate(nbytes: int, fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(nbytes / _timed(fn) for _ in range(repeats))


def _layer_range(key_len: int) -> tuple[int, int, int]:
    off = block_file.payload_offset(GEOMETRY, key_len)
    return off, off + LAYER * GEOMETRY.layer_block_bytes, GEOMETRY.layer_block_bytes


# -- Redis ------------------------------------------------------------------------------------

def _redis_reader(url: str, keys: list[str], start: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import redis

    client = redis.Redis.from_url(url, socket_read_size=_READ_SIZE)
    dest = bytearray(len(client.get(keys[0]) or b""))
    start.wait()
    t0 = time.perf_counter()
    total = 0
    for k in keys:
        raw = client.get(k)
        assert raw is not None
        dest[:] = raw  # into the engine's buffer
        total += len(raw)
    out.put((total, time.perf_counter() - t0))


def bench_redis(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    hashes, values = _values(args.blocks)
    keys = [f"bench:{h}" for h in hashes]
    nbytes = sum(len(v) for v in values)
    with tempfile.TemporaryDirectory(prefix="dp-redis-cand-") as tmp:
        cfg = RedisServerConfig(dir=Path(tmp), port=free_port(), appendonly=args.persist,
                                appendfsync="everysec")
        with RedisServerProcess(cfg) as server:
            client = redis.Redis.from_url(server.url, socket_read_size=_READ_SIZE)
            dest = bytearray(len(values[0]))

            def put_all() -> None:
                client.flushdb()
                for k, v in zip(keys, values, strict=True):
                    client.set(k, v, nx=True)

            def get_all() -> None:
                for k in keys:
                    raw = client.get(k)
                    assert raw is not None
                    dest[:] = raw

            def get_pipelined() -> None:
                for i in range(0, len(keys), args.batch):
                    pipe = client.pipeline(transaction=False)
                    for k in keys[i : i + args.batch]:
                        pipe.get(k)
                    for raw in pipe.execute():
                        dest[:] = raw

            off, start, size = _layer_range(len(hashes[0]))
            ldest = bytearray(size)

            def get_layers() -> None:
                for k in keys:
                    pipe = client.pipeline(transaction=False)
                    pipe.getrange(k, 0, off - 1)
                    pipe.getrange(k, start, start + size - 1)
                    _header, layer = pipe.execute()
                    ldest[:] = layer

            prefix = keys[:60] + [f"bench:missing{i}" for i in range(40)]

            def exists_prefix() -> None:
                pipe = client.pipeline(transaction=False)
                for k in prefix:
                    pipe.exists(k)
                pipe.execute()

            res: dict[str, Any] = {"server": "redis-server " + client.info()["redis_version"],
                                   "client": f"redis-py {redis.__version__} + hiredis",
                                   "persistence": "AOF everysec" if args.persist else "none"}
            res["put_bytes_s"] = _median_rate(nbytes, put_all, args.repeats)
            res["get_bytes_s"] = _median_rate(nbytes, get_all, args.repeats)
            res["get_batched_bytes_s"] = _median_rate(nbytes, get_pipelined, args.repeats)
            lbytes = size * len(keys)
            res["get_layer_bytes_s"] = _median_rate(lbytes, get_layers, args.repeats)
            res["get_layer_latency_s"] = _timed(get_layers) / len(keys)
            res["prefix_check_100_s"] = statistics.median(_timed(exists_prefix) for _ in range(50))
            res["concurrent"] = _concurrent(_redis_reader, server.url, keys, args.clients)
            info = client.info("memory")
            res["server_used_memory_bytes"] = info["used_memory"]
            res["stored_value_bytes"] = nbytes
            client.close()
    return res


# -- Mooncake Store ----------------------------------------------------------------------------

_SEGMENT = 512 << 20
_LOCAL_BUF = 64 << 20


def _mc_setup(meta: str, master: str, segment: int) -> Any:
    from mooncake.store import MooncakeDistributedStore

    store = MooncakeDistributedStore()
    rc = store.setup("127.0.0.1", meta, segment, _LOCAL_BUF, "tcp", "", master)
    if rc != 0:
        raise RuntimeError(f"mooncake setup failed: {rc}")
    return store


def _mc_owner(meta: str, master: str, ready: mp.Event, done: mp.Event) -> None:  # type: ignore[type-arg]
    """The storage service: contributes the memory segment and stays up."""
    store = _mc_setup(meta, master, _SEGMENT)
    ready.set()
    done.wait()
    store.close()


def _mc_reader(urls: tuple[str, str], keys: list[str], start: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    store = _mc_setup(urls[0], urls[1], 0)
    size = store.get_size(keys[0])
    dest = np.empty(size, np.uint8)
    store.register_buffer(dest.ctypes.data, size)
    start.wait()
    t0 = time.perf_counter()
    total = 0
    for k in keys:
        n = store.get_into(k, dest.ctypes.data, size)
        assert n == size, n
        total += n
    out.put((total, time.perf_counter() - t0))
    store.unregister_buffer(dest.ctypes.data)
    store.close()


def bench_mooncake(args: argparse.Namespace) -> dict[str, Any]:
    import mooncake

    bindir = Path(sys.executable).parent
    hashes, values = _values(args.blocks)
    keys = [f"bench:{h}" for h in hashes]
    nbytes = sum(len(v) for v in values)
    rpc, http = free_port(), free_port()
    meta, master = f"http://127.0.0.1:{http}/metadata", f"127.0.0.1:{rpc}"
    tmp = tempfile.mkdtemp(prefix="dp-mc-cand-")
    log = open(os.path.join(tmp, "master.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(bindir / "mooncake_master"), f"--rpc_port={rpc}",
                             "--enable_http_metadata_server=true",
                             "--http_metadata_server_host=127.0.0.1",
                             f"--http_metadata_server_port={http}"],
                            stdout=log, stderr=subprocess.STDOUT)
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    owner = ctx.Process(target=_mc_owner, args=(meta, master, ready, done))
    try:
        time.sleep(1.0)
        owner.start()
        if not ready.wait(60):
            raise RuntimeError("mooncake storage owner did not come up")
        store = _mc_setup(meta, master, 0)
        size = len(values[0])
        src = np.empty((len(values), size), np.uint8)
        for i, v in enumerate(values):
            src[i] = np.frombuffer(v, np.uint8)
        dest = np.empty((len(values), size), np.uint8)
        for arr in (src, dest):
            if store.register_buffer(arr.ctypes.data, arr.nbytes) != 0:
                raise RuntimeError("register_buffer failed")

        def put_all() -> None:
            store.batch_remove(keys, True) if hasattr(store, "batch_remove") else None
            for i, k in enumerate(keys):
                rc = store.put_from(k, src[i].ctypes.data, size)
                if rc != 0:
                    raise RuntimeError(f"put_from {rc}")

        def get_all() -> None:
            for i, k in enumerate(keys):
                n = store.get_into(k, dest[i].ctypes.data, size)
                if n != size:
                    raise RuntimeError(f"get_into {n}")

        def get_batched() -> None:
            for i in range(0, len(keys), args.batch):
                part = keys[i : i + args.batch]
                got = store.batch_get_into(part, [dest[i + j].ctypes.data for j in range(len(part))],
                                           [size] * len(part))
                if any(n != size for n in got):
                    raise RuntimeError(f"batch_get_into {got}")

        off, start, lsize = _layer_range(len(hashes[0]))
        ldest = np.empty(off + lsize, np.uint8)
        store.register_buffer(ldest.ctypes.data, ldest.nbytes)

        def get_layers() -> None:
            for k in keys:
                got = store.get_into_ranges([ldest.ctypes.data], [[k]], [[[0, off]]],
                                            [[[0, start]]], [[[off, lsize]]])
                if got[0][0] != [off, lsize]:
                    raise RuntimeError(f"get_into_ranges {got}")

        prefix = keys[:60] + [f"bench:missing{i}" for i in range(40)]

        def exists_prefix() -> None:
            store.batch_is_exist(prefix)

        res: dict[str, Any] = {"server": f"mooncake_master {getattr(mooncake, '__version__', '0.3.13.post1')}",
                               "client": "mooncake.store.MooncakeDistributedStore (TCP transfer engine)",
                               "persistence": "none (memory segments of the owner process)"}
        put_all()
        res["put_bytes_s"] = statistics.median(
            nbytes / _timed(lambda: (store.batch_remove(keys, True), put_all())) for _ in range(args.repeats))
        res["get_bytes_s"] = _median_rate(nbytes, get_all, args.repeats)
        if not np.array_equal(src, dest):
            raise RuntimeError("mooncake read back different bytes")
        res["get_batched_bytes_s"] = _median_rate(nbytes, get_batched, args.repeats)
        res["get_layer_bytes_s"] = _median_rate(lsize * len(keys), get_layers, args.repeats)
        res["get_layer_latency_s"] = _timed(get_layers) / len(keys)
        res["prefix_check_100_s"] = statistics.median(_timed(exists_prefix) for _ in range(50))
        res["concurrent"] = _concurrent(_mc_reader, (meta, master), keys, args.clients)
        res["stored_value_bytes"] = nbytes
        store.close()
    finally:
        done.set()
        owner.join(30)
        if owner.is_alive():
            owner.kill()
        proc.terminate()
        proc.wait(30)
        log.close()
    return res


def _concurrent(target: Callable[..., None], where: Any, keys: list[str], clients: list[int]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out: dict[str, Any] = {}
    for c in clients:
        start, q = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=target, args=(where, keys, start, q)) for _ in range(c)]
        for p in procs:
            p.start()
        time.sleep(3.0 + c)  # let every client connect before the gate opens
        t0 = time.perf_counter()
        start.set()
        results = [q.get(timeout=300) for _ in procs]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(60)
        total = sum(r[0] for r in results)
        out[str(c)] = {"aggregate_bytes_s": total / wall,
                       "per_client_bytes_s": statistics.median(r[0] / r[1] for r in results)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("backend", choices=["redis", "mooncake"])
    p.add_argument("--blocks", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clients", default="1,2,4")
    p.add_argument("--persist", action=argparse.BooleanOptionalAction, default=True,
                   help="redis: AOF on (appendfsync everysec)")
    p.add_argument("--json")
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    res = bench_redis(args) if args.backend == "redis" else bench_mooncake(args)
    res.update(backend=args.backend, blocks=args.blocks, value_bytes=len(_values(1)[1][0]),
               layer_block_bytes=GEOMETRY.layer_block_bytes, load_avg=os.getloadavg(),
               cpus=os.cpu_count())
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""`dualpath bench store`: FileKVStore throughput against plain sequential file I/O
(or, with `--store redis://...` / `--start-redis`, RedisKVStore against the raw Redis client:
`store_bench_net`).

For each block size, the same total bytes are written and read twice in the same directory
and run: once through `FileKVStore` (one file per Full Block, header + per-layer CRC-32s,
atomic rename) and once as one plain file written/read sequentially in Full-Block-sized
chunks. Both sides follow the same fsync policy and both read cold: every file of both sides
is fsync'ed and then dropped from the page cache (`posix_fadvise(DONTNEED)` per file, or the
global `/proc/sys/vm/drop_caches`) before each timed read. Both sides read into one reused,
preallocated buffer (as an engine reads into its DRAM buffer). Sides alternate order per
repeat and the median of the repeats is reported. Optionally adds prefill times with 0 /
90 / 99 % of the prompt loaded from the store (`dualpath.bench.prefill_times`, model side).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.core.model_config import KV_DTYPE_BYTES
from dualpath.kv import BlockGeometry, FileKVStore, block_hashes, block_io
from dualpath.kv.layout import aligned_empty
from dualpath.kv.open_store import store_kind

# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json): 30 layers, 3 KV heads, head_dim 576/9 = 64.
SMOLLM2_LAYERS, SMOLLM2_KV_HEADS, SMOLLM2_HEAD_DIM = 30, 3, 64
_POOL_BLOCKS = 4  # distinct random payloads cycled over the puts (content does not matter to the FS)
_PHASES = 10  # writes x2, reads x3, layer reads x3, serial store reads x2 (8 without O_DIRECT)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", help="directory to measure in (default: a fresh temp dir); "
                        "put it on the disk or shared mount you want to measure")
    parser.add_argument("--store", metavar="SPEC",
                        help="the store to measure: a directory (same as --dir) or a networked "
                        "store URL (redis://[:PASSWORD@]HOST:PORT/DB, rediss://, unix://): "
                        "RedisKVStore vs the raw Redis client on that server")
    parser.add_argument("--start-redis", action="store_true",
                        help="start a throwaway local redis-server (AOF everysec) and measure it")
    parser.add_argument("--pipeline-blocks", type=int, default=4,
                        help="networked store: blocks per round trip (RedisKVStore pipeline_blocks)")
    parser.add_argument("--total-mib", type=float, default=256.0, help="bytes per side and size (MiB)")
    parser.add_argument("--block-tokens", default="64,256",
                        help="comma-separated block sizes in tokens; the first is the primary size")
    parser.add_argument("--kv-dtype", choices=sorted(KV_DTYPE_BYTES), default="float32")
    parser.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True,
                        help="make every block durable before put returns (raw side: fsync per chunk)")
    parser.add_argument("--io-threads", type=int, default=8,
                        help="FileKVStore io_threads: blocks get_many/put_many keep in flight")
    parser.add_argument("--direct-io", action=argparse.BooleanOptionalAction, default=True,
                        help="FileKVStore direct_io: Full Block reads with O_DIRECT where possible")
    parser.add_argument("--repeats", type=int, default=5, help="runs per size; medians are reported")
    parser.add_argument("--cache-drop", choices=["fadvise", "drop_caches"], default="fadvise",
                        help="how reads are made cold: per-file posix_fadvise(DONTNEED), or the "
                        "global /proc/sys/vm/drop_caches (root only)")
    parser.add_argument("--keep", action="store_true", help="keep the files written")
    parser.add_argument("--prefill", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure prefill time with part of the prompt loaded from the store")
    parser.add_argument("--prefill-models", default="tiny,smollm2")
    parser.add_argument("--prefill-lengths", default="512,2048,8192")
    parser.add_argument("--prefill-fractions", default="0,0.9,0.99")
    parser.add_argument("--prefill-repeats", type=int, default=1, help="prefill runs per point (median)")
    parser.add_argument("--prefill-threads", type=int, default=None,
                        help="torch intra-op threads for the prefill runs (default: torch's)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = _int_list(args.block_tokens, "--block-tokens")
    if args.total_mib <= 0 or args.repeats < 1:
        raise UserInputError("--total-mib must be > 0 and --repeats >= 1")
    bptpl = 2 * SMOLLM2_KV_HEADS * SMOLLM2_HEAD_DIM * KV_DTYPE_BYTES[args.kv_dtype]
    if args.start_redis or (args.store and store_kind(args.store) == "redis"):
        if args.pipeline_blocks < 1 or args.io_threads < 1:
            raise UserInputError("--pipeline-blocks and --io-threads must be >= 1")
        from dualpath.bench import store_bench_net

        net = store_bench_net.run(args, sizes, bptpl, SMOLLM2_LAYERS)
        net["model_geometry"] = {"name": "SmolLM2-135M", "num_layers": SMOLLM2_LAYERS,
                                 "bytes_per_token_per_layer": bptpl, "kv_dtype": args.kv_dtype}
        net["prefill"], net["prefill_skipped"] = None, "not run with a networked --store"
        return net
    if args.store:
        if args.dir and args.dir != args.store:
            raise UserInputError("give either --dir or --store DIRECTORY, not both")
        args.dir = args.store[len("file://"):] if args.store.startswith("file://") else args.store
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dualpath-store-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    total_bytes = int(args.total_mib * 2**20)
    results: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(sizes) * args.repeats * _PHASES, desc="store bench", unit="phase") as bar:
        for tokens in sizes:
            geometry = BlockGeometry(SMOLLM2_LAYERS, tokens, bptpl)
            nblocks = max(1, total_bytes // geometry.full_block_bytes)
            results[str(tokens)] = _measure_size(base, geometry, nblocks, args, bar.update)
    if not args.keep and not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    primary = results[str(sizes[0])]
    out: dict[str, Any] = {
        "benchmark": "store",
        "read_efficiency": primary["read_efficiency"],
        "write_efficiency": primary["write_efficiency"],
        "get_layer_bytes_s": primary["store_get_layer_bytes_s"],
        "get_layer_efficiency": primary["get_layer_efficiency"],
        "primary_block_tokens": sizes[0],
        "model_geometry": {"name": "SmolLM2-135M", "num_layers": SMOLLM2_LAYERS,
                           "bytes_per_token_per_layer": bptpl, "kv_dtype": args.kv_dtype},
        "fsync": args.fsync,
        "io_threads": args.io_threads,
        "direct_io": args.direct_io,
        "cache_method": _cache_method(args.cache_drop),
        "repeats": args.repeats,
        "dir": str(base),
        "sizes": results,
        "machine": machine_info(),
    }
    rows = [(t, r["num_blocks"], r["block_bytes"], r["store_write_bytes_s"] / 1e6,
             r["raw_write_bytes_s"] / 1e6, r["write_efficiency"], r["store_read_bytes_s"] / 1e6,
             r["raw_read_bytes_s"] / 1e6, r["read_efficiency"], r["store_get_layer_bytes_s"] / 1e6,
             r["get_layer_efficiency"]) for t, r in results.items()]
    print(format_table(["tokens", "blocks", "block_B", "st_wr_MB/s", "raw_wr_MB/s", "wr_eff",
                        "st_rd_MB/s", "raw_rd_MB/s", "rd_eff", "layer_MB/s", "layer_eff"], rows))
    out["prefill"], out["prefill_skipped"] = _prefill(args)
    return out


def _measure_size(base: Path, g: BlockGeometry, nblocks: int, args: argparse.Namespace,
                  tick: Callable[[int], object]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, g.full_block_shape, dtype=np.uint8) for _ in range(_POOL_BLOCKS)]
    tokens = rng.integers(0, 49152, nblocks * g.block_tokens)  # SmolLM2 vocab size 49152
    hashes = block_hashes(tokens, g.block_tokens, "store-bench")
    items = [(h, pool[i % len(pool)]) for i, h in enumerate(hashes)]
    # One pre-touched destination for every read of both sides (an engine's DRAM buffer).
    dest = aligned_empty((nblocks, *g.full_block_shape))
    dest.fill(1)
    nbytes = nblocks * g.full_block_bytes
    samples: dict[str, list[float]] = {}
    direct_gets = [0, 0]  # Full Block reads done with O_DIRECT, all Full Block reads
    # The plain baseline is the better of buffered and O_DIRECT reads when the store may use
    # O_DIRECT, so the store is never credited for a trick the raw side was denied.
    raw_direct = args.direct_io and block_io.direct_io_possible(dest[0], g.empty_layer_block())
    for rep in range(args.repeats):
        root = base / f"store-{g.block_tokens}-{rep}"
        raw = base / f"raw-{g.block_tokens}-{rep}.bin"
        shutil.rmtree(root, ignore_errors=True)
        store = FileKVStore(root, g, fsync=args.fsync, io_threads=args.io_threads,
                            direct_io=args.direct_io)
        writers: list[tuple[str, int, Callable[[], None]]] = [
            ("store_write", nbytes, partial(store.put_many, items)),
            ("raw_write", nbytes, partial(_raw_write, raw, nblocks, pool, args.fsync)),
        ]
        reads: list[tuple[str, int, Callable[[], None]]] = [
            ("store_read", nbytes, partial(_store_read, store, hashes, dest)),
            ("raw_buffered_read", nbytes, partial(_raw_read, raw, dest, False)),
        ]
        layers: list[tuple[str, int, Callable[[], None]]] = [
            ("store_get_layer", nbytes, partial(_store_layers, store, hashes, g)),
            ("raw_buffered_strided_read", nbytes, partial(_raw_layers, raw, nblocks, g, False)),
        ]
        if raw_direct:
            reads.append(("raw_direct_read", nbytes, partial(_raw_read, raw, dest, True)))
            layers.append(("raw_direct_strided_read", nbytes, partial(_raw_layers, raw, nblocks, g, True)))
        serial = [("store_read_serial", nbytes, partial(_store_read_serial, store, hashes, dest)),
                  ("store_get_layer_serial", nbytes, partial(_store_layers_serial, store, hashes, g))]
        for group in (writers, reads, layers, serial):
            for name, size, fn in group if rep % 2 == 0 else group[::-1]:
                if name not in ("store_write", "raw_write"):
                    _make_cold([*root.rglob("*.kvb"), raw], args.cache_drop)
                samples.setdefault(f"{name}_bytes_s", []).append(size / _timed(fn))
                tick(1)
        store.close()
        stats = store.stats()
        direct_gets[0] += stats.direct_reads
        direct_gets[1] += stats.gets
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            raw.unlink(missing_ok=True)
    for kind in ("read", "strided_read"):
        best = samples[f"raw_buffered_{kind}_bytes_s"]
        if raw_direct:
            best = [max(a, b) for a, b in zip(best, samples[f"raw_direct_{kind}_bytes_s"], strict=True)]
        samples[f"raw_{kind}_bytes_s"] = best
    r: dict[str, Any] = {k: statistics.median(v) for k, v in samples.items()}
    # Efficiencies are medians of per-repeat ratios: the two sides of one repeat run back to
    # back, so a slow spell of a shared disk hits both and cancels in the ratio.
    for eff, num, den in (("read_efficiency", "store_read", "raw_read"),
                          ("write_efficiency", "store_write", "raw_write"),
                          ("get_layer_efficiency", "store_get_layer", "raw_strided_read"),
                          ("read_serial_efficiency", "store_read_serial", "raw_read"),
                          ("get_layer_serial_efficiency", "store_get_layer_serial", "raw_strided_read")):
        ratios = [a / b for a, b in zip(samples[f"{num}_bytes_s"], samples[f"{den}_bytes_s"], strict=True)]
        r[eff] = statistics.median(ratios)
    r["direct_read_fraction"] = direct_gets[0] / max(1, direct_gets[1])
    r.update(num_blocks=nblocks, block_bytes=g.full_block_bytes, total_bytes=nbytes,
             samples=samples)
    return r


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _raw_write(path: Path, nblocks: int, pool: list[np.ndarray], fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(nblocks):
            buf = pool[i % len(pool)].data.cast("B")
            done = 0
            while done < len(buf):
                done += os.write(fd, buf[done:])
            if fsync:
                os.fsync(fd)
    finally:
        os.close(fd)


def _store_read(store: FileKVStore, hashes: list[str], dest: np.ndarray) -> None:
    """The whole prefix in one `get_many` (how a loader reads a prompt's cached blocks)."""
    got = store.get_many(hashes, list(dest))
    if any(block is None for block in got):
        raise RuntimeError("store bench: a block went missing on read-back")


def _store_read_serial(store: FileKVStore, hashes: list[str], dest: np.ndarray) -> None:
    for h, out in zip(hashes, dest, strict=True):
        if store.get(h, out=out) is None:
            raise RuntimeError(f"store bench: block {h} missing on read-back")


def _store_layers(store: FileKVStore, hashes: list[str], g: BlockGeometry) -> None:
    """Layer-major, as layerwise prefill streams: layer 0 of every block, then layer 1, ..."""
    outs = [g.empty_layer_block() for _ in hashes]
    for layer in range(g.num_layers):
        if any(b is None for b in store.get_layer_many(hashes, layer, outs)):
            raise RuntimeError(f"store bench: a block's layer {layer} went missing on read-back")


def _store_layers_serial(store: FileKVStore, hashes: list[str], g: BlockGeometry) -> None:
    out = g.empty_layer_block()
    for layer in range(g.num_layers):
        for h in hashes:
            if store.get_layer(h, layer, out=out) is None:
                raise RuntimeError(f"store bench: layer {layer} of block {h} missing on read-back")


def _raw_read(path: Path, dest: np.ndarray, direct: bool) -> None:
    """Sequential reads of Full-Block-sized chunks into consecutive slices of `dest`."""
    flat = dest.data.cast("B")
    step = dest[0].nbytes
    fd = os.open(path, os.O_RDONLY | (block_io.O_DIRECT if direct else 0))
    try:
        for offset in range(0, len(flat), step):
            if os.preadv(fd, [flat[offset : offset + step]], offset) != step:
                raise RuntimeError("store bench: short raw read")
    finally:
        os.close(fd)


def _raw_layers(path: Path, nblocks: int, g: BlockGeometry, direct: bool) -> None:
    """The raw counterpart of `_store_layers`: the same layer-major Layer-Block-sized preads."""
    buf = g.empty_layer_block().data.cast("B")
    fd = os.open(path, os.O_RDONLY | (block_io.O_DIRECT if direct else 0))
    try:
        if not direct:  # exactly the asked ranges, as the store does
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for layer in range(g.num_layers):
            for i in range(nblocks):
                offset = i * g.full_block_bytes + layer * g.layer_block_bytes
                if os.preadv(fd, [buf], offset) != len(buf):
                    raise RuntimeError("store bench: short raw read")
    finally:
        os.close(fd)


def _make_cold(files: list[Path], method: str) -> None:
    """Flush every file to disk (untimed), then evict it from the page cache."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            if method == "fadvise":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if method == "drop_caches":
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
        except OSError as exc:
            raise UserInputError(f"--cache-drop drop_caches not permitted here ({exc}); use fadvise") from exc


def _cache_method(method: str) -> str:
    if method == "fadvise":
        return "fsync + posix_fadvise(POSIX_FADV_DONTNEED) on every file of both sides before each read"
    return "fsync + echo 1 > /proc/sys/vm/drop_caches before each read"


def _prefill(args: argparse.Namespace) -> tuple[list[dict[str, Any]] | None, str | None]:
    if not args.prefill:
        return None, "disabled with --no-prefill"
    try:
        from dualpath.bench.prefill_times import prefill_times  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "dualpath.bench.prefill_times":
            raise
        msg = "dualpath.bench.prefill_times is not available yet; prefill times skipped"
        print(msg)
        return None, msg
    models = [m for m in args.prefill_models.split(",") if m]
    lengths = _int_list(args.prefill_lengths, "--prefill-lengths")
    fractions = [float(x) for x in args.prefill_fractions.split(",") if x]
    rows: list[dict[str, Any]] = list(prefill_times(
        models, lengths, fractions, repeats=args.prefill_repeats, threads=args.prefill_threads,
        progress=True))
    if rows:
        headers = list(rows[0])
        print(format_table(headers, [[row.get(h) for h in headers] for row in rows]))
    return rows, None


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserInputError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise UserInputError(f"{flag} needs at least one positive integer, got {text!r}")
    return values

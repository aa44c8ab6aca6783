"""`RedisKVStore`: Full Blocks as values in a Redis server reached over the storage network.

Keys are `<prefix>:<layers>x<tokens>x<bytes>:<block hash>` (prefix `dualpath:kv` unless the
URL says `?prefix=`): the geometry is in the key and the model identity is in the hash
(`dualpath.kv.hashing`), so any number of models and block sizes share one server. A value
is the block file's bytes (`block_value`): header with one CRC-32 per Layer Block, then the
Full Block. Every read verifies what it returns.

- `put`: one `SET key value NX` (atomic: a reader sees the whole value or none; idempotent:
  an existing key is left alone, same hash = same bytes).
- `get`: one `GET`; length, header and every layer CRC checked before the caller sees it.
- `get_layer`: `EXISTS` + `STRLEN` + `GETRANGE` of the header (skipped once the block's CRCs
  are cached) + `GETRANGE` of the layer, in one MULTI/EXEC round trip (atomic, so eviction
  between the commands cannot look like a torn value): only the layer's bytes cross the
  network.
- `contains_many` / `longest_prefix`: pipelined `EXISTS` (one round trip per 64 blocks),
  answered by the server, so every process on every host sees every other's puts.
- Batches (`get_many`, `get_layer_many`, `put_many`) send `pipeline_blocks` blocks per round
  trip on up to `io_threads` connections.

A value that fails a check (wrong length, header, key, geometry, layer CRC, or not a string at
all) is logged, counted in `stats().corrupt_blocks`, treated as a miss and renamed to
`<prefix>:quarantine:...` (kept 7 days as evidence, still evictable), so the next `put`
rewrites it. A server that cannot be reached raises StoreError (the runtime treats a failed
read as a miss); every call reconnects by itself, so the store works again as soon as the
server is back. A put refused for lack of memory (`maxmemory` with `noeviction`) is dropped
and counted (`puts_dropped`), like a file store that cannot make room.

Durability and capacity are the server's: see `redis_server` for the configuration we run
(AOF, `maxmemory`, `allkeys-lru`) and docs/decisions/networked-kv-store.md for why Redis.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dualpath.core.errors import ConfigError, CorruptBlockError, StoreError
from dualpath.kv import block_file, block_value
from dualpath.kv.layout import BlockGeometry, check_full_block, check_layer_block, check_layer_index
from dualpath.kv.redis_url import check_hash, redacted, split_url
from dualpath.kv.store import KVStore, StatsCounter, StoreStats

logger = logging.getLogger(__name__)

QUARANTINE_TTL_S = 7 * 24 * 3600
_EXISTS_CHUNK = 64
_CHECKSUM_CACHE_BLOCKS = 8192
_READ_CHUNK_BYTES = 1 << 20  # hiredis reads 1 MiB per recv: ~2x the default 64 KiB on MB values
_T = TypeVar("_T")


class RedisKVStore(KVStore):
    """A KVStore on a Redis server; see the module docstring. Thread-safe; fork-safe."""

    def __init__(
        self,
        url: str,
        geometry: BlockGeometry,
        *,
        io_threads: int = 4,
        pipeline_blocks: int = 4,
        socket_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        """Connect to the server at `url` (`redis://[:password@]host:port/db`, `rediss://`
        for TLS, `unix:///path.sock?db=N`; `?prefix=NAME` sets the key prefix) and PING it.

        io_threads: connections a batch uses at once. pipeline_blocks: blocks per round trip
        (bounds the bytes in flight per connection). Raises StoreError if the server does not
        answer, ConfigError for a malformed URL.
        """
        if io_threads < 1 or pipeline_blocks < 1:
            raise StoreError(f"io_threads and pipeline_blocks must be >= 1, got {io_threads}, {pipeline_blocks}")
        self.geometry = geometry
        self.io_threads = io_threads
        self.pipeline_blocks = pipeline_blocks
        client_url, prefix = split_url(url)
        self.url = redacted(client_url)
        self.key_prefix = prefix
        g = geometry
        self._ns = f"{prefix}:{g.num_layers}x{g.block_tokens}x{g.bytes_per_token_per_layer}:"
        self._quarantine_ns = f"{prefix}:quarantine:{g.num_layers}x{g.block_tokens}x{g.bytes_per_token_per_layer}:"
        try:
            pool = redis.ConnectionPool.from_url(
                client_url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                socket_read_size=_READ_CHUNK_BYTES,
                # The pool already replaces pooled connections the server closed (a restart);
                # one immediate retry on a new connection covers a server that went away
                # between checkout and the command. No backoff: a down server must fail fast
                # (a read that fails is recomputed).
                retry=Retry(NoBackoff(), 1, (redis.ConnectionError,)),
                retry_on_error=[redis.ConnectionError],
                # TCP only (Unix sockets take no keepalive): a half-dead peer is noticed.
                **({} if client_url.startswith("unix:") else {"socket_keepalive": True}),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad Redis store URL {self.url!r}: {exc}") from exc
        self._client = redis.Redis(connection_pool=pool)
        self._checksums = block_file.ChecksumCache(_CHECKSUM_CACHE_BLOCKS)
        self._stats = StatsCounter()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._pool_pid = os.getpid()
        with self._errors("opening"):
            self._client.ping()

    # -- queries (no block data read) -------------------------------------------------------

    def contains_many(self, hashes: Sequence[str]) -> list[bool]:
        keys = [self._key(h) for h in hashes]
        out: list[bool] = []
        for i in range(0, len(keys), _EXISTS_CHUNK * 16):
            out += self._exists(keys[i : i + _EXISTS_CHUNK * 16])
        return out

    def longest_prefix(self, hashes: Sequence[str]) -> int:
        """Leading stored blocks, asked of the server 64 at a time (one round trip each)."""
        keys = [self._key(h) for h in hashes]
        n = 0
        for i in range(0, len(keys), _EXISTS_CHUNK):
            for present in self._exists(keys[i : i + _EXISTS_CHUNK]):
                if not present:
                    return n
                n += 1
        return n

    def server_info(self) -> dict[str, Any]:
        """What the server says about persistence, memory and eviction (for reports)."""
        with self._errors("INFO"):
            info = self._client.info()
        return {k: info.get(k) for k in (
            "redis_version", "aof_enabled", "rdb_bgsave_in_progress", "used_memory",
            "maxmemory", "maxmemory_policy", "evicted_keys", "keyspace_hits", "keyspace_misses")}

    # -- reads -----------------------------------------------------------------------------

    def get(self, block_hash: str, out: np.ndarray | None = None) -> np.ndarray | None:
        return self.get_many([block_hash], None if out is None else [out])[0]

    def get_layer(self, block_hash: str, layer: int, out: np.ndarray | None = None) -> np.ndarray | None:
        return self.get_layer_many([block_hash], layer, None if out is None else [out])[0]

    def get_many(
        self, hashes: Sequence[str], outs: Sequence[np.ndarray | None] | None = None
    ) -> list[np.ndarray | None]:
        g = self.geometry
        targets = self._targets(hashes, outs, "get_many")
        for o in targets:
            if o is not None:
                check_full_block(o, g, "output Full Block")
        keys = [self._key(h) for h in hashes]

        def one_round(idx: list[int]) -> list[np.ndarray | None]:
            with self._errors(f"reading {len(idx)} KV block(s)"):
                pipe = self._client.pipeline(transaction=False)
                for i in idx:
                    pipe.get(keys[i])
                raws = pipe.execute(raise_on_error=False)
            return [self._finish_get(hashes[i], raw, targets[i]) for i, raw in zip(idx, raws, strict=True)]

        return self._in_rounds(len(hashes), one_round)

    def get_layer_many(
        self, hashes: Sequence[str], layer: int, outs: Sequence[np.ndarray | None] | None = None
    ) -> list[np.ndarray | None]:
        g = self.geometry
        check_layer_index(layer, g)
        targets = self._targets(hashes, outs, "get_layer_many")
        for o in targets:
            if o is not None:
                check_layer_block(o, g, "output Layer Block")
        keys = [self._key(h) for h in hashes]

        def one_round(idx: list[int]) -> list[np.ndarray | None]:
            known = [self._checksums.get(hashes[i]) for i in idx]
            with self._errors(f"reading layer {layer} of {len(idx)} KV block(s)"):
                pipe = self._client.pipeline(transaction=True)
                for i, crcs in zip(idx, known, strict=True):
                    start, size = block_value.layer_range(g, hashes[i], layer)
                    pipe.exists(keys[i])
                    pipe.strlen(keys[i])
                    if crcs is None:
                        pipe.getrange(keys[i], 0, block_file.payload_offset(g, len(hashes[i])) - 1)
                    pipe.getrange(keys[i], start, start + size - 1)
                replies = iter(pipe.execute(raise_on_error=False))
            parts: dict[int, list[Any]] = {}
            for i, crcs in zip(idx, known, strict=True):
                parts[i] = [next(replies) for _ in range(3 if crcs is not None else 4)]
            return [self._finish_layer(hashes[i], layer, parts[i], crcs, targets[i])
                    for i, crcs in zip(idx, known, strict=True)]

        return self._in_rounds(len(hashes), one_round)

    # -- writes ----------------------------------------------------------------------------

    def put(self, block_hash: str, block: np.ndarray, parent: str | None = None) -> None:
        """Store `block` (`SET NX`). `parent` is accepted for the file store's call shape and
        not used: Redis evicts by its own LRU, not by the prefix trie."""
        self.put_many([(block_hash, block)])

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        for h, block in items:
            check_hash(h)
            check_full_block(block, self.geometry)

        def one_round(idx: list[int]) -> list[None]:
            values = {i: block_value.encode_value(items[i][0], self.geometry, items[i][1]) for i in idx}
            with self._errors(f"writing {len(idx)} KV block(s)"):
                pipe = self._client.pipeline(transaction=False)
                for i in idx:
                    pipe.set(self._key(items[i][0]), values[i], nx=True)
                results = pipe.execute(raise_on_error=False)
            for i, res in zip(idx, results, strict=True):
                self._count_put(items[i][0], res, len(values[i]))
            return [None] * len(idx)

        self._in_rounds(len(items), one_round)

    def stats(self) -> StoreStats:
        return self._stats.snapshot()

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._client.connection_pool.disconnect()

    # -- internals -------------------------------------------------------------------------

    def _key(self, block_hash: str) -> str:
        check_hash(block_hash)
        return self._ns + block_hash

    def _exists(self, keys: list[str]) -> list[bool]:
        if not keys:
            return []
        with self._errors("checking which KV blocks are stored"):
            pipe = self._client.pipeline(transaction=False)
            for k in keys:
                pipe.exists(k)
            return [bool(n) for n in pipe.execute()]

    def _finish_get(self, block_hash: str, raw: object, out: np.ndarray | None) -> np.ndarray | None:
        g = self.geometry
        if raw is None:
            self._stats.add(gets=1)
            return None
        target = g.empty_full_block() if out is None else out
        try:
            if isinstance(raw, redis.ResponseError):
                self._raise_unless_wrongtype(raw, block_hash)
                raise CorruptBlockError("not a string value")
            if not isinstance(raw, bytes | bytearray):
                raise CorruptBlockError(f"unexpected reply type {type(raw).__name__}")
            crcs = block_value.decode_full(raw, block_hash, g, target)
        except CorruptBlockError as exc:
            self._corrupt(block_hash, str(exc))
            self._stats.add(gets=1)
            return None
        self._checksums.put(block_hash, crcs)
        self._stats.add(gets=1, get_hits=1, bytes_read=g.full_block_bytes)
        return target

    def _finish_layer(self, block_hash: str, layer: int, parts: list[Any], crcs: list[int] | None,
                      out: np.ndarray | None) -> np.ndarray | None:
        g = self.geometry
        for part in parts:
            if isinstance(part, redis.ResponseError):
                self._raise_unless_wrongtype(part, block_hash)
        exists = parts[0]
        if exists == 0:
            self._stats.add(layer_gets=1)
            return None
        target = g.empty_layer_block() if out is None else out
        try:
            if any(isinstance(p, redis.ResponseError) for p in parts):
                raise CorruptBlockError("not a string value")
            length = parts[1]
            if not isinstance(length, int):
                raise CorruptBlockError(f"unexpected STRLEN reply {length!r}")
            block_value.check_length(length, block_hash, g)
            if crcs is None:
                crcs = block_value.check_header(_as_bytes(parts[2]), block_hash, g)
            block_value.decode_layer(_as_bytes(parts[-1]), crcs, layer, g, target)
        except CorruptBlockError as exc:
            self._corrupt(block_hash, str(exc))
            self._stats.add(layer_gets=1)
            return None
        self._checksums.put(block_hash, crcs)
        self._stats.add(layer_gets=1, layer_hits=1, bytes_read=g.layer_block_bytes)
        return target

    def _count_put(self, block_hash: str, result: object, nbytes: int) -> None:
        if isinstance(result, redis.OutOfMemoryError):
            logger.warning("Redis store %s is full (maxmemory, noeviction): put of %s dropped", self.url, block_hash)
            self._stats.add(puts=1, puts_dropped=1)
        elif isinstance(result, Exception):
            raise StoreError(f"KV store {self.url}: writing KV block {block_hash}: {result}")
        elif result:
            self._stats.add(puts=1, bytes_written=nbytes)
        else:
            self._stats.add(puts=1, puts_skipped=1)

    def _raise_unless_wrongtype(self, err: redis.ResponseError, block_hash: str) -> None:
        """A value of another type under our key is corrupt data; any other error reply
        (NOAUTH, a read-only replica, ...) is the server failing: StoreError."""
        if not str(err).startswith("WRONGTYPE"):
            raise StoreError(f"KV store {self.url}: reading KV block {block_hash}: {err}")

    def _corrupt(self, block_hash: str, reason: str) -> None:
        self._checksums.discard(block_hash)
        key = self._key(block_hash)
        target = f"{self._quarantine_ns}{block_hash}:{time.time_ns()}"
        moved = False
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.rename(key, target)
            pipe.expire(target, QUARANTINE_TTL_S)
            moved = pipe.execute(raise_on_error=False)[0] is True
        except redis.RedisError:
            pass  # the read already failed safely; the next reader will retry the move
        where = f"renamed to {target}" if moved else "left in place (already moved or replaced)"
        logger.warning("corrupt KV block %s in %s: %s; treated as a miss, %s", block_hash, self.url, reason, where)
        self._stats.add(corrupt_blocks=1, quarantined_blocks=int(moved))

    def _targets(self, hashes: Sequence[str], outs: Sequence[np.ndarray | None] | None,
                 what: str) -> list[np.ndarray | None]:
        targets: list[np.ndarray | None] = list(outs) if outs is not None else [None] * len(hashes)
        if len(targets) != len(hashes):
            raise StoreError(f"{what}: {len(hashes)} hashes but {len(targets)} output buffers")
        for h in hashes:
            check_hash(h)
        return targets

    def _in_rounds(self, n: int, one_round: Callable[[list[int]], list[_T]]) -> list[_T]:
        """Run `one_round` over chunks of `pipeline_blocks` indices, up to io_threads at once."""
        chunks = [list(range(i, min(n, i + self.pipeline_blocks))) for i in range(0, n, self.pipeline_blocks)]
        if len(chunks) <= 1 or self.io_threads == 1:
            return [x for c in chunks for x in one_round(c)]
        return [x for part in self._executor().map(one_round, chunks) for x in part]

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool_pid != os.getpid():  # a forked child: the parent's threads are not here
                self._pool, self._pool_pid = None, os.getpid()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="kvstore-redis")
            return self._pool

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate the client library's errors at this boundary (core.errors)."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreError(
                f"KV store {self.url} unreachable while {what}: {exc} "
                "(calls fail until the server is back; the client reconnects by itself)"
            ) from exc
        except redis.RedisError as exc:
            raise StoreError(f"KV store {self.url}: {what}: {exc}") from exc


def _as_bytes(reply: object) -> bytes:
    if not isinstance(reply, bytes | bytearray):
        raise CorruptBlockError(f"unexpected reply type {type(reply).__name__}")
    return bytes(reply) if isinstance(reply, bytearray) else reply

"""`open_store(spec, geometry)`: the one way engines, the scheduler process and tools open a KV store.

A store spec is either a directory or a URL:

==================================  ========================================================
`./kvstore`, `/mnt/3fs/kv`          `FileKVStore` on that directory (local disk or a shared
`file:///mnt/3fs/kv`                POSIX mount: 3FS, CephFS, Lustre, NFSv4). The default.
`redis://host:6379/0`               `RedisKVStore` on a Redis server over TCP
`redis://:PASSWORD@host:6379/0`     ... with AUTH (`requirepass`)
`rediss://host:6380/0`              ... over TLS
`unix:///run/redis.sock?db=0`       ... over a Unix socket (same host)
`...?prefix=NAME`                   (Redis) keys under NAME instead of `dualpath:kv`
==================================  ========================================================

Every process that opens the same spec sees the same blocks; the prefix lookup
(`longest_prefix`) answers for all of them. Options are passed to the backend's constructor
(`FileKVStore(fsync=, io_threads=, direct_io=, ...)`, `RedisKVStore(io_threads=,
pipeline_blocks=, socket_timeout_s=, ...)`); an option a backend does not take is a
ConfigError naming it.
"""

from __future__ import annotations

import inspect
from typing import Any

from dualpath.core.config import ClusterConfig
from dualpath.core.errors import ConfigError
from dualpath.kv.layout import BlockGeometry
from dualpath.kv.store import KVStore

REDIS_SCHEMES = ("redis", "rediss", "unix")


def store_kind(spec: str) -> str:
    """"file" or "redis" for a store spec (see the module docstring); ConfigError otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("KV store spec must be a directory or a URL, got an empty value")
    scheme, sep, _ = spec.partition("://")
    if not sep:
        return "file"
    if scheme == "file":
        return "file"
    if scheme in REDIS_SCHEMES:
        return "redis"
    raise ConfigError(
        f"unknown KV store URL scheme {scheme!r} in {spec!r}: use a directory, file://PATH, "
        "redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///PATH.sock"
    )


def open_store(spec: str, geometry: BlockGeometry, **options: Any) -> KVStore:
    """Open the KV store named by `spec` for blocks of `geometry`.

    Raises ConfigError for a spec or option that cannot be used, StoreError when the store
    cannot be reached or opened (a Redis server that does not answer, an unwritable root).
    """
    kind = store_kind(spec)
    if kind == "file":
        from dualpath.kv.file_store import FileKVStore

        path = spec[len("file://"):] if spec.startswith("file://") else spec
        if not path:
            raise ConfigError(f"file store URL {spec!r} has no path")
        _check_options(FileKVStore, options, spec)
        return FileKVStore(path, geometry, **options)
    try:
        from dualpath.kv.redis_store import RedisKVStore
    except ImportError as exc:  # the optional client is not installed
        raise ConfigError(f"KV store {spec!r} needs the redis package (pip install redis hiredis): {exc}") from exc
    _check_options(RedisKVStore, options, spec)
    return RedisKVStore(spec, geometry, **options)


def _check_options(cls: type, options: dict[str, Any], spec: str) -> None:
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        hint = ""
        if "max_bytes" in unknown and cls.__name__ == "RedisKVStore":
            hint = ("; a Redis store's capacity is the server's: run redis-server with "
                    "--maxmemory BYTES --maxmemory-policy allkeys-lru")
        raise ConfigError(f"KV store {spec!r} ({cls.__name__}) does not take {', '.join(unknown)}{hint}")


def store_options(config: ClusterConfig) -> dict[str, Any]:
    """The store options a cluster's config sets (`--store-max-bytes`, file stores only: a
    Redis store's capacity is its server's `maxmemory`)."""
    return {} if config.store_max_bytes is None else {"max_bytes": config.store_max_bytes}

"""Real redis-server processes for the Redis store tests (skipped when the binary is missing)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from dualpath.core.errors import StoreError
from dualpath.kv.redis_server import (
    RedisServerConfig,
    RedisServerProcess,
    find_redis_server,
    free_port,
)

SKIP_REASON = ("redis-server not installed: `make install` installs Debian's redis-server "
               "as root (apt-get install redis-server); the Redis KV store tests need it")


def require_redis_server() -> None:
    if find_redis_server() is None:
        pytest.skip(SKIP_REASON)


def start_server(directory: Path, **config: Any) -> RedisServerProcess:
    """A redis-server on a free port with AOF in `directory` (retries if the port is taken)."""
    require_redis_server()
    last: StoreError | None = None
    for _ in range(5):
        server = RedisServerProcess(RedisServerConfig(dir=directory, port=free_port(), **config))
        try:
            return server.start()
        except StoreError as exc:  # most likely the port was taken meanwhile
            last = exc
    raise AssertionError(f"could not start redis-server: {last}")


def isolated_url(server: RedisServerProcess) -> str:
    """The server's URL with a key prefix of its own, so tests sharing a server never meet."""
    return f"{server.url}?prefix=test-{uuid.uuid4().hex[:12]}"

"""Fixtures of the kv tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kv_helpers import SMALL
from redis_helpers import start_server

from dualpath.kv import BlockGeometry
from dualpath.kv.redis_server import RedisServerProcess


@pytest.fixture
def geometry() -> BlockGeometry:
    return SMALL


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerProcess]:
    """One real redis-server for the tests that do not stop it (each uses its own key prefix)."""
    server = start_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()

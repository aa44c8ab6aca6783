"""Fixtures of the transfer tests."""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.context import SpawnContext

import pytest


@pytest.fixture
def spawn() -> SpawnContext:
    # spawn, not fork: the parent may hold zmq and pacing threads.
    return mp.get_context("spawn")

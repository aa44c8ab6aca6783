"""Fixtures of the kv tests."""

from __future__ import annotations

import pytest
from kv_helpers import SMALL

from dualpath.kv import BlockGeometry


@pytest.fixture
def geometry() -> BlockGeometry:
    return SMALL

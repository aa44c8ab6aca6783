"""Testbed tests need root and iproute2 (CI runs as root); without them they skip, saying why.

After every test module, no namespace of this process's testbeds may be left."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dualpath.testbed import PREFIX, environment_problem
from dualpath.testbed.commands import list_netns

PROBLEM = environment_problem()


@pytest.fixture(scope="session")
def netns_ok() -> None:
    if PROBLEM is not None:
        pytest.skip(f"netns testbed unavailable: {PROBLEM}")


def ours() -> list[str]:
    """Namespaces of testbeds made by this process."""
    return [n for n in list_netns() if n.startswith(f"{PREFIX}-{os.getpid()}-")]


@pytest.fixture(autouse=True, scope="module")
def nothing_left_behind() -> Iterator[None]:
    yield
    if PROBLEM is None:
        assert ours() == [], "a testbed namespace outlived its test module"

"""Pickling and copying for frozen dataclasses that also works when they are compiled.

A frozen dataclass pickles by restoring its `__dict__`; compiled with mypyc (the optional
native simulator, `dualpath.sim.native`) it has no `__dict__` and its `__setattr__` refuses,
so `pickle`, `copy` and `multiprocessing` would fail on it. `reduce_frozen` rebuilds the
object through its constructor instead — validation included — the same in both builds.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def reduce_frozen(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    """`__reduce__` for a frozen dataclass: its class and its init fields, in order."""
    return type(obj), tuple(getattr(obj, f.name) for f in fields(obj) if f.init)

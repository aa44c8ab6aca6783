"""JSON to bytes for responses: orjson when installed (several times faster), else the stdlib.

orjson refuses lone surrogates in strings (which a client can smuggle in through JSON escapes
and which then appear in error messages); those objects fall back to the stdlib, which escapes
them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_fast: Callable[[Any], bytes] | None
try:
    import orjson

    _fast = orjson.dumps
except ImportError:  # pragma: no cover - orjson is a declared dependency
    _fast = None


def dumps(obj: Any) -> bytes:
    if _fast is not None:
        try:
            return _fast(obj)
        except TypeError:
            pass
    return json.dumps(obj, separators=(",", ":")).encode()

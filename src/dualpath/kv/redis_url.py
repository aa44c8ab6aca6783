"""Store URLs of the Redis backend: our `?prefix=` option, password redaction, key checks."""

from __future__ import annotations

import re
import urllib.parse

from dualpath.core.errors import StoreError

DEFAULT_PREFIX = "dualpath:kv"
_HASH_RE = re.compile(r"[0-9a-f]{4,128}")  # the file store's rule: names stay portable


def check_hash(block_hash: str) -> None:
    if not isinstance(block_hash, str) or not _HASH_RE.fullmatch(block_hash):
        raise StoreError(f"block hash must be 4-128 lowercase hex chars, got {block_hash!r}")


def split_url(url: str) -> tuple[str, str]:
    """(the URL for the client library, our key prefix) — `prefix` is ours, not redis-py's."""
    base, _, query_text = url.partition("?")  # kept verbatim: urlunsplit drops unix:'s //
    prefix = DEFAULT_PREFIX
    rest = []
    for k, v in urllib.parse.parse_qsl(query_text, keep_blank_values=True):
        if k == "prefix":
            if not v or any(c.isspace() for c in v):
                raise StoreError(f"bad key prefix {v!r} in Redis store URL")
            prefix = v
        else:
            rest.append((k, v))
    return (f"{base}?{urllib.parse.urlencode(rest)}" if rest else base), prefix


def redacted(url: str) -> str:
    """The URL without its password (it goes into logs and error messages)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

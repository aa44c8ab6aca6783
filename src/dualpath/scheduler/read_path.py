"""Read-path policies: which node's storage NIC reads a request's cached prefix.

Each policy is a pure function of the request, the two chosen nodes and their current read
queues (tokens). Selected by name from `READ_POLICIES`:

- "pe-only": always the prefill node (the classic path; basic, layerwise).
- "de-only": always the decode node (`--read-path de`).
- "shorter-queue": DESIGN.md 3 — the side whose node has the shorter read queue; a tie goes
  to the prefill side (the classic path needs no extra DE->PE hop).
- "split" (beyond the paper, off by default): divide the read so both queues end as level
  as possible: the PE side takes x = (cached + q_de - q_pe) / 2 tokens, clamped to
  [0, cached] and rounded to whole storage blocks; the PE side reads the *first* x tokens of
  the prefix, the DE side the rest. When x is 0 or everything it degrades to "de" / "pe".
"""

from __future__ import annotations

from collections.abc import Callable

from dualpath.core.errors import ConfigError
from dualpath.scheduler.types import ReadPlan, RequestInfo

ReadPolicy = Callable[[RequestInfo, int, int, int, int, int], ReadPlan]
"""(request, pe_node_id, de_node_id, pe_read_q, de_read_q, block_tokens) -> ReadPlan."""


def pe_only(req: RequestInfo, pe_node: int, de_node: int, pe_q: int, de_q: int,
            block_tokens: int) -> ReadPlan:
    return ReadPlan(req.request_id, "pe", pe_node, de_node, req.cached_tokens, 0)


def de_only(req: RequestInfo, pe_node: int, de_node: int, pe_q: int, de_q: int,
            block_tokens: int) -> ReadPlan:
    return ReadPlan(req.request_id, "de", pe_node, de_node, 0, req.cached_tokens)


def shorter_queue(req: RequestInfo, pe_node: int, de_node: int, pe_q: int, de_q: int,
                  block_tokens: int) -> ReadPlan:
    if de_q < pe_q:
        return ReadPlan(req.request_id, "de", pe_node, de_node, 0, req.cached_tokens)
    return ReadPlan(req.request_id, "pe", pe_node, de_node, req.cached_tokens, 0)


def split(req: RequestInfo, pe_node: int, de_node: int, pe_q: int, de_q: int,
          block_tokens: int) -> ReadPlan:
    cached = req.cached_tokens
    x = split_pe_tokens(cached, pe_q, de_q, block_tokens)
    if x >= cached:
        return ReadPlan(req.request_id, "pe", pe_node, de_node, cached, 0)
    if x <= 0:
        return ReadPlan(req.request_id, "de", pe_node, de_node, 0, cached)
    return ReadPlan(req.request_id, "split", pe_node, de_node, x, cached - x)


def split_pe_tokens(cached: int, pe_q: int, de_q: int, block_tokens: int) -> int:
    """Tokens the PE side reads so that pe_q + x ~= de_q + (cached - x), in whole blocks.

    A tie (including an empty prefix) gives everything to the PE side.
    """
    ideal = (cached + de_q - pe_q) / 2.0
    if ideal >= cached:
        return cached
    if ideal <= 0:
        return 0
    x = round(ideal / block_tokens) * block_tokens
    return max(0, min(cached, x))


READ_POLICIES: dict[str, ReadPolicy] = {
    "pe-only": pe_only,
    "de-only": de_only,
    "shorter-queue": shorter_queue,
    "split": split,
}


def make_read_policy(name: str) -> ReadPolicy:
    try:
        return READ_POLICIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown read policy {name!r}; choose one of: {', '.join(READ_POLICIES)}"
        ) from None

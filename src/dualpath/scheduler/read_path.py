"""Read-path policies: which node's storage NIC reads a request's cached prefix.

A policy is called once per placed request with the request, the two chosen nodes and their
current read queues (tokens), and returns a `ReadPlan`. Selected by name from
`READ_POLICIES`; `make_read_policy` builds a fresh object, so a policy's state (a tie or
alternation cursor) lives in the placement object of one `GlobalScheduler`, and the runtime
and the simulator, making the same calls, make the same choices.

- "pe-only": always the prefill node (the classic path; basic, layerwise).
- "de-only": always the decode node (`--read-path de`).
- "round-robin" (`dualpath-rr`, DESIGN.md 6): no load awareness, the requests that read
  anything alternate PE side / DE side (the first goes to the PE side), one alternation per
  decode node: with round-robin placement over an even number of decode nodes a single
  cursor would send every DE-side read to the same half of them (measured on the netns
  testbed, 1P2D: all DE-side bytes on one decode host).
- "shorter-queue": DESIGN.md 3 — the side whose node has the shorter read queue. Equal
  queues alternate between the sides (the first tie goes to the PE side), so neither side
  is preferred systematically: with a drained cluster every queue is 0 and a fixed rule
  would send every read to one side.
- "split" (beyond the paper, off by default): divide the read so both queues end as level
  as possible: the PE side takes x = (cached + q_de - q_pe) / 2 tokens, clamped to
  [0, cached] and rounded to whole storage blocks; the PE side reads the *first* x tokens of
  the prefix, the DE side the rest. When x is 0 or everything it degrades to "de" / "pe".

Under "round-robin" and "shorter-queue" a request with nothing cached reads nothing; it gets
side "pe" with 0 tokens and moves no cursor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dualpath.core.errors import ConfigError
from dualpath.scheduler.types import ReadPlan, RequestInfo


class ReadPolicy(Protocol):
    """Who calls: the placement policies, once per placed request, in placement order."""

    name: str

    def __call__(self, req: RequestInfo, pe_node: int, de_node: int, pe_q: int, de_q: int,
                 block_tokens: int) -> ReadPlan:
        """The read plan of `req` given both nodes' read queues (may advance a cursor)."""
        ...


def _pe(req: RequestInfo, pe_node: int, de_node: int) -> ReadPlan:
    return ReadPlan(req.request_id, "pe", pe_node, de_node, req.cached_tokens, 0)


def _de(req: RequestInfo, pe_node: int, de_node: int) -> ReadPlan:
    return ReadPlan(req.request_id, "de", pe_node, de_node, 0, req.cached_tokens)


class PeOnly:
    name = "pe-only"

    def __call__(self, req: RequestInfo, pe_node: int, de_node: int, pe_q: int, de_q: int,
                 block_tokens: int) -> ReadPlan:
        return _pe(req, pe_node, de_node)


class DeOnly:
    name = "de-only"

    def __call__(self, req: RequestInfo, pe_node: int, de_node: int, pe_q: int, de_q: int,
                 block_tokens: int) -> ReadPlan:
        return _de(req, pe_node, de_node)


class RoundRobinSide:
    """Alternates the side of every request that reads something, per decode node. State:
    each decode node's next side."""

    name = "round-robin"

    def __init__(self) -> None:
        self.next_side: dict[int, str] = {}

    def __call__(self, req: RequestInfo, pe_node: int, de_node: int, pe_q: int, de_q: int,
                 block_tokens: int) -> ReadPlan:
        if req.cached_tokens == 0:
            return _pe(req, pe_node, de_node)
        side = self.next_side.get(de_node, "pe")
        self.next_side[de_node] = "de" if side == "pe" else "pe"
        return _pe(req, pe_node, de_node) if side == "pe" else _de(req, pe_node, de_node)


class ShorterQueue:
    """The shorter read queue wins; ties alternate. State: the side of the next tie."""

    name = "shorter-queue"

    def __init__(self) -> None:
        self.tie_side = "pe"

    def __call__(self, req: RequestInfo, pe_node: int, de_node: int, pe_q: int, de_q: int,
                 block_tokens: int) -> ReadPlan:
        if req.cached_tokens == 0:
            return _pe(req, pe_node, de_node)
        if de_q < pe_q:
            return _de(req, pe_node, de_node)
        if pe_q < de_q:
            return _pe(req, pe_node, de_node)
        side, self.tie_side = self.tie_side, ("de" if self.tie_side == "pe" else "pe")
        return _pe(req, pe_node, de_node) if side == "pe" else _de(req, pe_node, de_node)


class Split:
    name = "split"

    def __call__(self, req: RequestInfo, pe_node: int, de_node: int, pe_q: int, de_q: int,
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

    An empty prefix gives 0 to both sides (side "pe"); equal queues split it in half.
    """
    ideal = (cached + de_q - pe_q) / 2.0
    if ideal >= cached:
        return cached
    if ideal <= 0:
        return 0
    x = round(ideal / block_tokens) * block_tokens
    return max(0, min(cached, x))


READ_POLICIES: dict[str, Callable[[], ReadPolicy]] = {
    "pe-only": PeOnly,
    "de-only": DeOnly,
    "round-robin": RoundRobinSide,
    "shorter-queue": ShorterQueue,
    "split": Split,
}


def make_read_policy(name: str) -> ReadPolicy:
    """A fresh policy object (its own cursors) of the policy called `name`."""
    try:
        factory = READ_POLICIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown read policy {name!r}; choose one of: {', '.join(READ_POLICIES)}"
        ) from None
    return factory()

"""`EarlyMessages`: data-plane messages that arrived before the assignment they belong to."""

from __future__ import annotations

from typing import Any

from dualpath.wire.types import AttemptId


class EarlyMessages:
    """Data messages that arrived before the control message creating their attempt.

    Engines' control and data planes are separate sockets, so a peer's data can overtake the
    scheduler's assignment. Messages are parked by attempt and replayed on assignment;
    attempts that finished or were aborted are remembered (bounded) so their stragglers are
    dropped. At most `remember` attempts are parked at once (the oldest go first), so data
    for attempts that never get assigned cannot grow without bound.
    """

    def __init__(self, remember: int = 4096) -> None:
        self._parked: dict[AttemptId, list[Any]] = {}
        self._gone: dict[AttemptId, None] = {}
        self._remember = remember

    def keep(self, attempt: AttemptId, msg: Any) -> None:
        if attempt in self._gone:
            return
        self._parked.setdefault(attempt, []).append(msg)
        if len(self._parked) > self._remember:
            del self._parked[next(iter(self._parked))]

    @property
    def parked(self) -> int:
        """Messages waiting for their attempt's assignment."""
        return sum(len(v) for v in self._parked.values())

    def take(self, attempt: AttemptId) -> list[Any]:
        return self._parked.pop(attempt, [])

    def forget(self, attempt: AttemptId) -> None:
        """`attempt` is over: drop what is parked and ignore what still comes."""
        self._parked.pop(attempt, None)
        self._gone[attempt] = None
        if len(self._gone) > self._remember:
            del self._gone[next(iter(self._gone))]

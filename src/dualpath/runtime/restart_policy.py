"""When to restart an engine process that died: exponential backoff, forgiven after a while.

Pure (time comes in). The first restart of an engine waits `initial_s`, each further one twice
as long up to `max_s`; an engine that stayed up for `reset_after_s` starts over at `initial_s`,
so one crash a day restarts fast while a crash loop does not spin.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    initial_s: float = 0.5
    max_s: float = 30.0
    reset_after_s: float = 60.0
    _delay: dict[int, float] = field(default_factory=dict)
    _started_s: dict[int, float] = field(default_factory=dict)
    restarts: int = 0

    def started(self, engine_id: int, now_s: float) -> None:
        self._started_s[engine_id] = now_s

    def delay_after_death(self, engine_id: int, now_s: float) -> float:
        """Seconds to wait before restarting `engine_id`, which just died."""
        up_s = now_s - self._started_s.get(engine_id, now_s)
        if up_s >= self.reset_after_s:
            self._delay.pop(engine_id, None)
        delay = self._delay.get(engine_id, self.initial_s / 2) * 2
        delay = min(self.max_s, max(self.initial_s, delay))
        self._delay[engine_id] = delay
        self.restarts += 1
        return delay

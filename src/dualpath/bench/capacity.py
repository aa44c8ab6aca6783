"""Capacity search: the highest arrival rate (APS) whose online run holds the SLO.

A probe runs a bounded online workload at one APS and passes when its SLO attainment is at
least `slo_target`. The search multiplies (or divides) the rate by `step` (2: doubles or
halves) from a start value until it has a passing and a failing rate, then bisects between
them; it stops after `max_probes` probes, when the bracket is narrower than `rel_tol` of the
passing rate, or when `max_aps` (a ceiling, if given) has passed. The answer is the highest
passing rate (0 when none passed). Attainment need not be monotone in APS under noise; the
search assumes it is and reports every probe so a reader can check.

`CapacitySearch` is the search as a state machine (`next_aps`, then `record`), so a caller
can step several systems' searches in lock-step, one probe of each per round; `find_capacity`
runs one search to the end with a probe callback.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dualpath.core.errors import UserInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    aps: float
    slo_attainment: float
    passed: bool
    report: dict[str, Any]


class CapacitySearch:
    """One capacity search. `next_aps()` is the rate to probe next (None: done); `record`
    (mutates) takes that probe's report."""

    def __init__(self, *, start_aps: float, slo_target: float, max_probes: int = 8,
                 rel_tol: float = 0.02, step: float = 2.0, max_aps: float | None = None) -> None:
        if not start_aps > 0:
            raise UserInputError(f"--aps must be > 0, got {start_aps}")
        if not 0 < slo_target <= 1:
            raise UserInputError(f"--slo-target must be in (0, 1], got {slo_target}")
        if max_probes < 1:
            raise UserInputError(f"--probes must be >= 1, got {max_probes}")
        if not step > 1:
            raise UserInputError(f"the search step must be > 1, got {step}")
        if max_aps is not None and not max_aps >= start_aps:
            raise UserInputError(f"the rate ceiling {max_aps} is below the start {start_aps}")
        self.slo_target = slo_target
        self.max_probes = max_probes
        self.rel_tol = rel_tol
        self.step = step
        self.max_aps = max_aps
        self.probes: list[Probe] = []
        self.lo: float | None = None  # highest passing rate
        self.hi: float | None = None  # lowest failing rate
        self._next: float | None = start_aps

    @property
    def capacity_aps(self) -> float:
        return self.lo or 0.0

    @property
    def bracketed(self) -> bool:
        """A passing and a failing rate were both seen."""
        return self.lo is not None and self.hi is not None

    def next_aps(self) -> float | None:
        return self._next

    def record(self, aps: float, report: dict[str, Any]) -> Probe:
        if self._next is None:
            raise UserInputError("the capacity search is already done")
        att = float(report.get("slo_attainment", math.nan))
        passed = not math.isnan(att) and att >= self.slo_target
        probe = Probe(aps, att, passed, report)
        self.probes.append(probe)
        log.info("probe aps=%.4g attainment=%.4f %s", aps, att, "pass" if passed else "fail")
        if passed:
            self.lo = aps if self.lo is None else max(self.lo, aps)
        else:
            self.hi = aps if self.hi is None else min(self.hi, aps)
        self._next = self._advance(aps)
        return probe

    def _advance(self, aps: float) -> float | None:
        if len(self.probes) >= self.max_probes:
            return None
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            if hi <= lo or (hi - lo) <= self.rel_tol * lo:
                return None
            return (lo + hi) / 2
        if lo is not None:
            if self.max_aps is not None:
                if lo >= self.max_aps:
                    return None
                return min(lo * self.step, self.max_aps)
            return lo * self.step
        return (hi or aps) / self.step


def find_capacity(
    probe: Callable[[float], dict[str, Any]],
    *,
    start_aps: float,
    slo_target: float,
    max_probes: int = 8,
    rel_tol: float = 0.02,
    step: float = 2.0,
    max_aps: float | None = None,
) -> tuple[float, list[Probe]]:
    """(capacity_aps, probes in the order run). `probe(aps)` returns a report dict with
    `slo_attainment`."""
    search = CapacitySearch(start_aps=start_aps, slo_target=slo_target, max_probes=max_probes,
                            rel_tol=rel_tol, step=step, max_aps=max_aps)
    while (aps := search.next_aps()) is not None:
        search.record(aps, probe(aps))
    return search.capacity_aps, search.probes

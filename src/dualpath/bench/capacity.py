"""Capacity search: the highest arrival rate (APS) whose online run holds the SLO.

A probe runs a bounded online workload at one APS and passes when its SLO attainment is at
least `slo_target`. The search multiplies (or divides) the rate by `step` (2: doubles or
halves) from a start value until it has a passing and a failing rate, then bisects between them; it stops after `max_probes` probes
or when the bracket is narrower than `rel_tol` of the passing rate. The answer is the
highest passing rate (0 when none passed). Attainment need not be monotone in APS under
noise; the search assumes it is and reports every probe so a reader can check.
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


def find_capacity(
    probe: Callable[[float], dict[str, Any]],
    *,
    start_aps: float,
    slo_target: float,
    max_probes: int = 8,
    rel_tol: float = 0.02,
    step: float = 2.0,
) -> tuple[float, list[Probe]]:
    """(capacity_aps, probes in the order run). `probe(aps)` returns a report dict with
    `slo_attainment`."""
    if not start_aps > 0:
        raise UserInputError(f"the capacity search needs a start --aps > 0, got {start_aps}")
    if not 0 < slo_target <= 1:
        raise UserInputError(f"--slo-target must be in (0, 1], got {slo_target}")
    if max_probes < 1:
        raise UserInputError(f"--probes must be >= 1, got {max_probes}")
    if not step > 1:
        raise UserInputError(f"the search step must be > 1, got {step}")
    lo: float | None = None  # highest passing rate
    hi: float | None = None  # lowest failing rate
    probes: list[Probe] = []
    aps = start_aps
    for _ in range(max_probes):
        report = probe(aps)
        att = float(report.get("slo_attainment", math.nan))
        passed = not math.isnan(att) and att >= slo_target
        probes.append(Probe(aps, att, passed, report))
        log.info("probe aps=%.4g attainment=%.4f %s", aps, att, "pass" if passed else "fail")
        if passed:
            lo = aps if lo is None else max(lo, aps)
        else:
            hi = aps if hi is None else min(hi, aps)
        if lo is not None and hi is not None:
            if hi <= lo or (hi - lo) <= rel_tol * lo:
                break
            aps = (lo + hi) / 2
        elif lo is not None:
            aps = lo * step
        else:
            aps = (hi or aps) / step
    return (lo or 0.0), probes

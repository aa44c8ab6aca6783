"""`--target sim`: hand a whole workload to the simulator, if it is installed.

The simulator is a discrete-event model; it does not run turn by turn. It exposes
`dualpath.sim.api.run_workload(workload, mode, args) -> list[TurnRecord]` (times in simulated
seconds since the start), reading the pass-through flags `--system`, `--pd`, `--hardware`,
`--model` (and `args.cutoff_s`, the probe cut-off or None) from `args`.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from dualpath.core.errors import UserInputError
from dualpath.workload.metrics import SLO, TurnRecord
from dualpath.workload.workload import Workload

SIM_MODULE = "dualpath.sim.api"


def run_in_simulator(
    workload: Workload, mode: str, args: argparse.Namespace, *, module_name: str = SIM_MODULE
) -> list[TurnRecord]:
    missing = f"simulator not available ({module_name}.run_workload is missing)"
    try:
        module = importlib.import_module(module_name)
        fn = module.run_workload
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UserInputError(missing) from None
        raise
    except AttributeError:
        raise UserInputError(missing) from None
    return list(fn(workload, mode, args))


def apply_cutoff(
    records: Sequence[TurnRecord], cutoff_s: float | None, slo: SLO
) -> tuple[list[TurnRecord], int]:
    """The driver's cut-off rule applied to finished records: keep turns that ended by the
    cut-off; a turn in flight at the cut-off that has waited longer than the TTFT objective
    counts as an unfinished miss; later turns are dropped."""
    if cutoff_s is None:
        return list(records), 0
    kept = [r for r in records if r.end_s <= cutoff_s]
    unfinished = sum(
        1 for r in records
        if r.start_s <= cutoff_s < r.end_s and cutoff_s - r.start_s > slo.ttft_s
    )
    return kept, unfinished

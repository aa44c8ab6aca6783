"""The ablation ladder (DESIGN.md section 6): what each `--system` name switches on.

Both `serve` and `simulate` resolve `--system NAME` through `system_spec(NAME)`, so the two
can never disagree about what a rung means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dualpath.core.errors import UserInputError

SystemName = Literal["basic", "layerwise", "dualpath-rr", "dualpath", "oracle"]
ReadPathMode = Literal["auto", "pe", "de"]

SYSTEM_NAMES: tuple[str, ...] = ("basic", "layerwise", "dualpath-rr", "dualpath", "oracle")
READ_PATH_MODES: tuple[str, ...] = ("auto", "pe", "de")


@dataclass(frozen=True)
class SystemSpec:
    """What one rung of the ablation ladder does.

    placement: name of the scheduler placement policy ("round-robin" or "dualpath").
    layerwise: prefix KV is streamed into prefill layer by layer (else loaded whole first).
    dual_path: reads may go through the decode node's SNIC (else prefill-side only).
    free_io:   storage reads, host<->GPU copies and PD transfers cost nothing (Oracle).
    """

    name: str
    placement: str
    layerwise: bool
    dual_path: bool
    free_io: bool


_SPECS: dict[str, SystemSpec] = {
    "basic": SystemSpec("basic", "round-robin", layerwise=False, dual_path=False, free_io=False),
    "layerwise": SystemSpec("layerwise", "round-robin", layerwise=True, dual_path=False, free_io=False),
    "dualpath-rr": SystemSpec("dualpath-rr", "round-robin", layerwise=True, dual_path=True, free_io=False),
    "dualpath": SystemSpec("dualpath", "dualpath", layerwise=True, dual_path=True, free_io=False),
    "oracle": SystemSpec("oracle", "dualpath", layerwise=True, dual_path=True, free_io=True),
}


def system_spec(name: str) -> SystemSpec:
    """Return the spec of `--system name`, or raise a UserInputError listing the valid names."""
    try:
        return _SPECS[name]
    except KeyError:
        raise UserInputError(
            f"unknown system {name!r}; choose one of: {', '.join(SYSTEM_NAMES)}"
        ) from None

"""How many CPU threads this process's model may use (torch intra-op threads).

Decode on CPU is memory-bound: a second thread roughly halves a step when a core is free,
and costs everybody when it is not (OpenMP threads spin while they wait), so the engines pick
the count per process: `set_torch_threads(n)` before the first forward pass.
"""

from __future__ import annotations

import torch

from dualpath.core.errors import UserInputError


def set_torch_threads(n: int) -> int:
    """Use `n` intra-op threads in this process from now on; returns the previous count."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserInputError(f"threads must be a positive integer, got {n!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    return previous


def torch_threads() -> int:
    return torch.get_num_threads()

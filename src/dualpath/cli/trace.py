"""`dualpath trace` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
from typing import Any

from dualpath.core.errors import UserInputError


def register(sub: Any) -> None:
    parser = sub.add_parser("trace", help="trace (not yet available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise UserInputError("'dualpath trace' is not yet available")

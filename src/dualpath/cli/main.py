"""Entry point of the `dualpath` CLI.

Each subcommand lives in its own module exposing `register(subparsers)`; a module's top level
imports nothing heavy (torch, fastapi, zmq), so `dualpath --help` stays fast. Errors from the
DualPath hierarchy become one-line messages; only bugs show tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from dualpath import __version__
from dualpath.core.errors import DualPathError, UserInputError

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "dualpath.cli.serve",
    "dualpath.cli.node",
    "dualpath.cli.simulate",
    "dualpath.cli.bench",
    "dualpath.cli.trace",
    "dualpath.cli.generate",
    "dualpath.cli.vllm",
    "dualpath.cli.native",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualpath",
        description="DualPath: dual-path KV-cache loading for agentic LLM serving.",
    )
    parser.add_argument("--version", action="version", version=f"dualpath {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity (default WARNING)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
    except UserInputError as exc:
        print(f"dualpath {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except DualPathError as exc:
        print(f"dualpath {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)

"""`dualpath native build|status|clean`: the optional mypyc-compiled simulator.

`build` compiles the simulator's hot modules from this source tree (needs a C compiler and
mypy's mypyc, both in the dev environment); runs then use it with `DUALPATH_NATIVE=1`, e.g.
`DUALPATH_NATIVE=1 dualpath bench sim-scale --full`. Results are identical to pure Python.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser("native", help="build / check the compiled (mypyc) simulator",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    nsub = parser.add_subparsers(dest="native_command", metavar="ACTION")
    nsub.required = True
    for name, func, help_text in (
        ("build", _build, "compile the simulator's hot modules with mypyc"),
        ("status", _status, "say whether the build exists and matches the sources"),
        ("clean", _clean, "remove the build"),
    ):
        p = nsub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--dir", type=Path, default=None,
                       help="build directory (default dualpath/sim/_native, or $DUALPATH_NATIVE_DIR)")
        p.set_defaults(func=func)


def _build(args: argparse.Namespace) -> int:
    from dualpath.sim import native

    t0 = time.perf_counter()
    manifest = native.build(args.dir, progress=lambda line: print(line, file=sys.stderr))
    print(f"built {len(native.MODULES)} modules in {time.perf_counter() - t0:.0f} s: {manifest}")
    print(f"use it with {native.ENV}=1, e.g. `{native.ENV}=1 dualpath bench sim-scale`")
    return 0


def _status(args: argparse.Namespace) -> int:
    from dualpath.sim import native

    status, _ = native.check(args.dir)
    print(f"{'usable' if status.active else 'not usable'}: {status.reason} ({status.directory})")
    return 0 if status.active else 1


def _clean(args: argparse.Namespace) -> int:
    from dualpath.sim import native

    removed = native.clean(args.dir)
    print("removed the native build" if removed else "no native build to remove")
    return 0

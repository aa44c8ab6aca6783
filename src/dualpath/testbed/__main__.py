"""`python -m dualpath.testbed list|cleanup`: see or remove testbed namespaces (root).

`list` shows every testbed namespace with its owner's pid and whether that owner still runs;
`cleanup` deletes those of dead owners (what `Testbed.up()` also does first), and with
`--all` also those of live ones (for a run that hangs).
"""

from __future__ import annotations

import argparse
import sys

from dualpath.core.errors import DualPathError
from dualpath.testbed import commands, naming


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualpath.testbed")
    parser.add_argument("action", choices=["list", "cleanup"])
    parser.add_argument("--all", action="store_true", help="cleanup: live testbeds too")
    args = parser.parse_args(argv)
    try:
        commands.check_environment()
        if args.action == "cleanup" and not args.all:
            removed = naming.cleanup_stale()
        else:
            removed = []
            for netns in commands.list_netns():
                parsed = naming.parse(netns)
                if parsed is None:
                    continue
                if args.action == "list":
                    state = "live" if parsed[0].alive() else "dead"
                    print(f"{netns}  owner pid {parsed[0].pid} ({state})")
                else:
                    naming.remove_netns(netns)
                    removed.append(netns)
    except DualPathError as exc:
        print(f"python -m dualpath.testbed: error: {exc}", file=sys.stderr)
        return 2
    if args.action == "cleanup":
        print(f"removed {len(removed)} namespace(s)" + "".join(f"\n  {n}" for n in removed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

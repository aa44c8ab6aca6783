"""`python -m dualpath` is the `dualpath` CLI."""

from dualpath.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())

"""The `dualpath` command line: one module per subcommand, each importing heavy parts lazily."""

"""Benchmarks and workload drivers behind `dualpath bench NAME`."""

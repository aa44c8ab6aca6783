"""Agentic workloads: trajectories, trace files (DualPath JSONL, Mooncake), the generator."""

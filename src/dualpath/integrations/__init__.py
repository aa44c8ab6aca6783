"""Adapters that bring DualPath into other serving systems (vLLM)."""

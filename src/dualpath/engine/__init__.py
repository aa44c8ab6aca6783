"""Prefill and decode engine processes (one process stands for one GPU)."""

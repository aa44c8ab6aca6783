"""The local DualPath cluster: launching engines, the scheduler process, fail-over."""

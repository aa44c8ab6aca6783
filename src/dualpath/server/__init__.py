"""The OpenAI-compatible HTTP front-end: app factory, backend interface, metrics, runner.

Importing this package imports nothing heavy; `dualpath.server.app` pulls in FastAPI.
"""

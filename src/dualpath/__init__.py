"""DualPath: dual-path KV-cache loading for agentic LLM serving.

Importing the package is cheap: heavy dependencies (torch, fastapi, zmq) are imported only
by the subpackages that use them.
"""

__version__ = "0.1.0"

"""DualPath: dual-path KV-cache loading for agentic LLM serving.

Importing the package is cheap: heavy dependencies (torch, fastapi, zmq) are imported only
by the subpackages that use them.
"""

import os as _os

__version__ = "0.1.0"

# The compiled simulator (dualpath/sim/native.py): opt-in, and only when its build matches
# these sources; otherwise everything stays pure Python.
if _os.environ.get("DUALPATH_NATIVE") == "1":
    from dualpath.sim import native as _native

    _native.activate()

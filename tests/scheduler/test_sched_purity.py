"""`import dualpath.scheduler` stays pure: no torch, no asyncio, no sockets (STYLE.md)."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import json, sys
import dualpath.scheduler
import dualpath.scheduler.batching, dualpath.scheduler.predictor, dualpath.scheduler.registry
print(json.dumps({m: m in sys.modules for m in ("torch", "asyncio", "socket", "numpy", "zmq")}))
"""


def test_import_pulls_in_no_torch_asyncio_or_sockets() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         check=True, timeout=60)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"torch": False, "asyncio": False, "socket": False, "numpy": False,
                      "zmq": False}

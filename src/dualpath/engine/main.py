"""Entry point of one engine process: `python -m dualpath.engine.main ...` (started by the
launcher; the same command starts an engine on another host)."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
import time

from dualpath.core.config import ClusterConfig
from dualpath.core.secret import ClusterSecret


def _watch_parent(parent_pid: int, on_orphan: threading.Event) -> None:
    """Exit when the process that started us is gone (no orphans, even after SIGKILL)."""
    while not on_orphan.is_set():
        if os.getppid() != parent_pid:
            os._exit(3)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="DualPath engine process")
    p.add_argument("--engine-id", type=int, required=True)
    p.add_argument("--node-id", type=int, required=True)
    p.add_argument("--role", choices=["prefill", "decode"], required=True)
    p.add_argument("--control", required=True, help="scheduler control address (tcp://...)")
    p.add_argument("--run-dir", required=True, help="directory of the NIC state files")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--config-json", required=True)
    p.add_argument("--cluster-secret", required=True, help="the cluster secret file (0600)")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("DUALPATH_ENGINE_LOG", "INFO"),
        format=f"%(asctime)s engine{args.engine_id} %(levelname)s %(name)s: %(message)s",
    )
    from dualpath.model.threads import set_torch_threads

    config = ClusterConfig.from_json(args.config_json)
    set_torch_threads(config.threads)
    stop_watch = threading.Event()
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop_watch),
                         daemon=True).start()
    if args.role == "prefill":
        from dualpath.engine.prefill import PrefillEngine as Engine
    else:
        from dualpath.engine.decode import DecodeEngine as Engine  # type: ignore[assignment]
    engine = Engine(config, args.engine_id, args.node_id, args.control, args.run_dir,
                    ClusterSecret.read(args.cluster_secret))
    # `kill -USR1 <pid>` writes every thread's stack to the engine's log (debugging a hang).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGTERM, lambda *_: engine.request_stop())
    signal.signal(signal.SIGINT, lambda *_: engine.request_stop())
    engine.run()  # returns after closing every socket, thread and NIC of the engine
    stop_watch.set()
    logging.shutdown()
    # Skip the interpreter's final garbage collection over torch's object graph: it can take
    # seconds on a loaded machine and there is nothing left to release.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

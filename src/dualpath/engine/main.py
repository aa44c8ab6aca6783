"""Entry point of one engine process: `python -m dualpath.engine.main ...` (started by the
launcher; the same command starts an engine on another host)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from dualpath.core.config import ClusterConfig


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
    args = p.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("DUALPATH_ENGINE_LOG", "INFO"),
        format=f"%(asctime)s engine{args.engine_id} %(levelname)s %(name)s: %(message)s",
    )
    import torch

    torch.set_num_threads(int(os.environ.get("DUALPATH_TORCH_THREADS", "1")))
    config = ClusterConfig.from_json(args.config_json)
    stop_watch = threading.Event()
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop_watch),
                         daemon=True).start()
    if args.role == "prefill":
        from dualpath.engine.prefill import PrefillEngine as Engine
    else:
        from dualpath.engine.decode import DecodeEngine as Engine  # type: ignore[assignment]
    engine = Engine(config, args.engine_id, args.node_id, args.control, args.run_dir)
    signal.signal(signal.SIGTERM, lambda *_: engine.request_stop())
    signal.signal(signal.SIGINT, lambda *_: engine.request_stop())
    engine.run()
    stop_watch.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())

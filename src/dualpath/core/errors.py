"""The one exception hierarchy of DualPath.

::

    DualPathError
    ├── UserInputError          bad CLI flag, config value, request parameter (clear message)
    │   ├── InvalidFieldError   one named request field is invalid (`field`; HTTP 400 param)
    │   ├── ConfigError         a config file or preset that cannot be used
    │   ├── GrammarError        a guided-decoding grammar that cannot be compiled, or a token
    │   │                       it does not allow
    │   └── TraceFormatError    a malformed trace / trajectory file (carries the line number)
    ├── ModelLoadError          a checkpoint that cannot be read or is not supported
    ├── StoreError              the KV store failed in a way that is not a plain miss
    │   └── CorruptBlockError   a block failed its checksum or is truncated (callers treat as miss)
    ├── TransferError           bytes could not be moved between engines
    ├── ProtocolError           an internal frame failed validation (wire.FrameRejected)
    ├── EngineError             an engine process failed or went away
    ├── SchedulingError         the scheduler was given an inconsistent state
    └── NativeBuildError        the optional compiled simulator could not be built

Backend errors (OSError, zmq.ZMQError, ...) are translated at the boundary of the module that
talks to that backend, so callers only ever catch these.
"""

from __future__ import annotations


class DualPathError(Exception):
    """Base class of every error DualPath raises on purpose."""


class UserInputError(DualPathError, ValueError):
    """Something the user gave us (flag, config, request field) is invalid."""


class InvalidFieldError(UserInputError):
    """A request field is invalid; `field` names it (the OpenAI error's `param`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ConfigError(UserInputError):
    """A configuration file, preset or combination of options cannot be used."""


class GrammarError(UserInputError):
    """A guided-decoding grammar (JSON schema, tool schema) is invalid, or a token was fed to
    a grammar that does not allow it."""


class TraceFormatError(UserInputError):
    """A trace file is malformed. `line` is 1-based, or None when not line-specific."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class ModelLoadError(DualPathError):
    """A model checkpoint could not be loaded."""


class StoreError(DualPathError):
    """The KV store failed (I/O error other than a plain miss)."""


class CorruptBlockError(StoreError):
    """A stored block is corrupt or truncated; it must be treated as a miss, never served."""


class TransferError(DualPathError):
    """Moving bytes between engines failed."""


class ProtocolError(DualPathError):
    """A frame on the internal plane is malformed, of the wrong version or direction, or
    claims to come from someone else; it is dropped and counted, never acted on."""


class EngineError(DualPathError):
    """An engine process failed or is unreachable."""


class SchedulingError(DualPathError):
    """The scheduler was given an inconsistent cluster state or request."""


class NativeBuildError(DualPathError):
    """`dualpath native build` failed (no C compiler, or mypyc rejected a module)."""

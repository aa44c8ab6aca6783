"""The simulator compiled with mypyc: an optional native build of its hot modules.

`build()` (`dualpath native build`) compiles `MODULES` — the simulator's event handlers and
the pure scheduler code they call — from this very source tree with mypyc into
`dualpath/sim/_native/` (git-ignored), with a manifest holding the fingerprint of every
source the compiled code depends on. `activate()` (at `import dualpath` when
`DUALPATH_NATIVE=1`) makes later imports of those modules load the compiled ones through a
meta-path finder — only when the manifest's fingerprint matches the tree, so an edited source
never runs stale compiled code; any mismatch leaves the pure Python modules in place and says
why (`status()`, also in `bench sim-scale`'s JSON).

The compiled modules are the same source, so results are identical field by field
(`tests/sim/test_native.py` checks a simulate report with and without). Nothing else changes:
without `DUALPATH_NATIVE=1`, or without a build, every module is pure Python.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from dualpath.core.errors import NativeBuildError

ENV = "DUALPATH_NATIVE"  # "1": activate at `import dualpath` (inherited by child processes)
DIR_ENV = "DUALPATH_NATIVE_DIR"  # another build directory (tests, several trees)
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

# The hot path of a simulation (cProfile and perf at 48P96D): the event loop, the stage
# handlers and their state, the links, the cost models, the scheduler modules they call per
# decision with the frozen dataclasses they exchange (`scheduler.types`), and the per-turn
# record (`workload.metrics`). Not compiled: config, presets, reports, the API — run once.
MODULES: tuple[str, ...] = (
    "dualpath.sim.batching", "dualpath.sim.cluster", "dualpath.sim.cost", "dualpath.sim.cpu",
    "dualpath.sim.decode", "dualpath.sim.events", "dualpath.sim.link",
    "dualpath.sim.model_cost", "dualpath.sim.prefill", "dualpath.sim.prefix",
    "dualpath.sim.reads", "dualpath.sim.simulator", "dualpath.sim.state",
    "dualpath.sim.transfer",
    "dualpath.scheduler.batching", "dualpath.scheduler.charges",
    "dualpath.scheduler.decode_select", "dualpath.scheduler.dualpath_policy",
    "dualpath.scheduler.layout", "dualpath.scheduler.predictor",
    "dualpath.scheduler.prefill_select", "dualpath.scheduler.read_path",
    "dualpath.scheduler.round_robin", "dualpath.scheduler.types", "dualpath.scheduler.virtual",
    "dualpath.workload.metrics",
)
# Every source the compiled code may depend on (what it imports, transitively): a change to
# any of them makes a build stale.
FINGERPRINT_PACKAGES: tuple[str, ...] = ("core", "scheduler", "sim", "workload")


@dataclass(frozen=True)
class NativeStatus:
    """Whether the compiled modules are in use in this process, and why (not)."""

    active: bool
    reason: str
    directory: str
    modules: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def package_root() -> Path:
    """The directory of the `dualpath` package whose sources are compiled."""
    return Path(__file__).resolve().parent.parent


def default_dir() -> Path:
    env = os.environ.get(DIR_ENV)
    return Path(env) if env else package_root() / "sim" / "_native"


def fingerprint(root: Path | None = None) -> str:
    """sha256 over the path and bytes of every .py file of `FINGERPRINT_PACKAGES`."""
    root = root or package_root()
    digest = hashlib.sha256()
    for package in FINGERPRINT_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if "_native" in rel.parts:
                continue
            digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _source_path(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")[1:]).with_suffix(".py")


def _ext_suffix() -> str:
    return str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def _compiler() -> str | None:
    parts = (os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc")).split()
    return shutil.which(parts[0]) if parts else None


def build(directory: Path | None = None, *,
          progress: Callable[[str], None] | None = None) -> Path:
    """Compile `MODULES` into `directory` (default `default_dir()`); returns the manifest path.

    The sources are copied to a scratch directory first, so the tree never holds compiled
    modules that would shadow its sources. Raises `NativeBuildError` with the compiler's
    last lines when mypyc or the C compiler fails; an old build is replaced only on success.
    """
    directory = (Path(directory) if directory else default_dir()).resolve()
    say = progress or (lambda _line: None)
    _check_target(directory)
    compiler = _compiler()
    if compiler is None:
        raise NativeBuildError("no C compiler found (set CC, or install gcc); the pure "
                               "Python simulator works without one")
    if importlib.util.find_spec("mypyc") is None:
        raise NativeBuildError("mypyc is not installed (it comes with mypy: "
                               "`pip install -e '.[dev]'`); the pure Python simulator works "
                               "without it")
    cc_name = Path(compiler).name
    root = package_root()
    with tempfile.TemporaryDirectory(prefix="dualpath-native-") as tmp:
        work = Path(tmp)
        shutil.copytree(root, work / "dualpath",
                        ignore=shutil.ignore_patterns("__pycache__", "_native", "*.so",
                                                      ".staging-*"))
        stamp = fingerprint(work / "dualpath")  # of what is compiled, not of the live tree
        files = [_source_path(Path("dualpath"), m).as_posix() for m in MODULES]
        say(f"mypyc: compiling {len(files)} modules (about a minute on 2 cores)")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mypyc", *files], cwd=work, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "MYPY_CACHE_DIR": str(work / ".mypy_cache")},
        )
        assert proc.stdout is not None
        tail: deque[str] = deque(maxlen=30)
        compiled = 0
        for line in proc.stdout:
            tail.append(line.rstrip())
            first = line.split(maxsplit=1)[0] if line.strip() else ""
            if " -c " in line and Path(first).name in (cc_name, "gcc", "cc", "clang"):
                compiled += 1
                say(f"  compiled {compiled}/{len(files) + 1} C files")
        if proc.wait() != 0:
            raise NativeBuildError("mypyc failed:\n" + "\n".join(tail))
        suffix = _ext_suffix()
        shared = sorted(work.glob(f"*__mypyc{suffix}"))
        if len(shared) != 1:
            raise NativeBuildError(f"expected one mypyc runtime library, found {len(shared)}")
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_parent_dir(directory)))
        try:
            _stage(work, staging, shared[0], suffix, stamp)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    say(f"native simulator built in {directory}")
    return directory / MANIFEST


def _check_target(directory: Path) -> None:
    """Refuse to build over anything that is not an earlier build (or empty)."""
    if directory.is_file():
        raise NativeBuildError(f"{directory} is a file, not a build directory")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / MANIFEST).is_file():
        raise NativeBuildError(f"{directory} is not empty and holds no native build "
                               f"({MANIFEST}); refusing to replace it — pick another --dir")


def _stage(work: Path, staging: Path, runtime: Path, suffix: str, stamp: str) -> None:
    """Copy the compiled modules and mypyc's runtime library into `staging`, with a manifest."""
    modules: dict[str, str] = {}
    for module in MODULES:
        so = _source_path(work / "dualpath", module).with_suffix(suffix)
        if not so.is_file():
            raise NativeBuildError(f"mypyc produced no extension for {module}")
        rel = module.replace(".", "/") + suffix
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(so, staging / rel)
        modules[module] = rel
    shutil.copy2(runtime, staging / runtime.name)
    manifest = {
        "version": MANIFEST_VERSION, "fingerprint": stamp, "ext_suffix": suffix,
        "python": sys.version, "mypy": _mypy_version(), "modules": modules,
        "runtime": {runtime.name[: -len(suffix)]: runtime.name},
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _parent_dir(directory: Path) -> Path:
    directory.parent.mkdir(parents=True, exist_ok=True)
    return directory.parent


def _mypy_version() -> str:
    try:
        from mypy.version import __version__
    except ImportError:  # pragma: no cover - mypyc comes with mypy
        return "unknown"
    return str(__version__)


def clean(directory: Path | None = None) -> bool:
    """Remove a build; True when there was one."""
    directory = (Path(directory) if directory else default_dir()).resolve()
    if not (directory / MANIFEST).is_file():
        return False
    shutil.rmtree(directory)
    return True


class _NativeFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled extension of each built module (and mypyc's runtime library)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        so = self.paths.get(fullname)
        if so is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(so))
        return importlib.util.spec_from_file_location(fullname, so, loader=loader)


_active: NativeStatus | None = None


def check(directory: Path | None = None, *,
          root: Path | None = None) -> tuple[NativeStatus, dict[str, Path]]:
    """Whether the build in `directory` may be used now with the sources under `root`
    (default: this package), and its files (nothing changes)."""
    directory = (Path(directory) if directory else default_dir()).resolve()
    where = str(directory)
    path = directory / MANIFEST
    if not path.is_file():
        return NativeStatus(False, "no native build (run `dualpath native build`)", where), {}
    try:
        manifest = json.loads(path.read_text())
        modules = {str(k): directory / str(v) for k, v in dict(manifest["modules"]).items()}
        runtime = {str(k): directory / str(v) for k, v in dict(manifest["runtime"]).items()}
        version, suffix, stamp = manifest["version"], manifest["ext_suffix"], manifest["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return NativeStatus(False, f"unreadable manifest {path}: {exc}", where), {}
    if version != MANIFEST_VERSION:
        return NativeStatus(False, f"manifest version {version}, expected {MANIFEST_VERSION}; "
                                   "rebuild", where), {}
    if suffix != _ext_suffix():
        return NativeStatus(False, f"built for another Python ({suffix}); rebuild", where), {}
    if set(modules) != set(MODULES):
        return NativeStatus(False, "built for another module list; rebuild", where), {}
    missing = [str(p) for p in [*modules.values(), *runtime.values()] if not p.is_file()]
    if missing:
        return NativeStatus(False, f"build is missing {missing[0]}; rebuild", where), {}
    if stamp != fingerprint(root):
        return NativeStatus(False, "stale: the sources changed since the build "
                                   "(run `dualpath native build`)", where), {}
    return NativeStatus(True, "compiled with mypyc", where, len(modules)), {**modules, **runtime}


def activate(directory: Path | None = None) -> NativeStatus:
    """Use the compiled modules for every later import, if the build is usable (idempotent).

    Refuses (returns an inactive status, nothing changed) when `DUALPATH_NATIVE=0`, when the
    build is missing, stale, for another Python or fails to load, or when one of `MODULES`
    is already imported as pure Python (a process must not mix the two). On success every
    compiled module is loaded at once, so rebuilding later cannot mix two builds.
    """
    global _active
    if _active is not None and _active.active:
        return _active
    if os.environ.get(ENV) == "0":
        return NativeStatus(False, f"{ENV}=0", str(directory or default_dir()))
    status, paths = check(directory)
    if status.active:
        early = sorted(m for m in MODULES if m in sys.modules)
        if early:
            status = NativeStatus(False, f"{early[0]} was imported before activation; "
                                         "activate first", status.directory)
    if not status.active:
        _active = status
        return status
    finder = _NativeFinder(paths)
    sys.meta_path.insert(0, finder)
    before = set(sys.modules)
    try:
        # All at once, now: a build replaced while this process runs can then not mix in.
        for module in MODULES:
            importlib.import_module(module)
    except Exception as exc:  # a broken build: undo everything, stay pure Python
        sys.meta_path.remove(finder)
        for name in set(sys.modules) - before:
            if name.startswith("dualpath."):
                del sys.modules[name]
        _active = NativeStatus(False, f"the build failed to load ({type(exc).__name__}: "
                                      f"{exc}); rebuild", status.directory)
        return _active
    os.environ[ENV] = "1"
    os.environ[DIR_ENV] = status.directory
    _active = status
    return status


def status() -> NativeStatus:
    """This process's state: active, refused (and why), or never asked."""
    if _active is not None:
        return _active
    return NativeStatus(False, f"not activated (set {ENV}=1)", str(default_dir()))

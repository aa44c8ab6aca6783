"""The mypyc build of the simulator (`dualpath.sim.native`): used only when it matches the
sources, never mixed with pure modules, and giving the very same results.

The build test compiles the real modules (about a minute on 2 cores) into a scratch directory
and runs a simulation in a child process with `DUALPATH_NATIVE=1`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dualpath.core.errors import NativeBuildError
from dualpath.sim import native

SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))


def _fake_build(directory: Path, **overrides: object) -> Path:
    """A manifest (and empty files) that `check` accepts unless `overrides` break it."""
    modules = {m: m.replace(".", "/") + SUFFIX for m in native.MODULES}
    manifest: dict[str, object] = {
        "version": native.MANIFEST_VERSION, "fingerprint": native.fingerprint(),
        "ext_suffix": SUFFIX, "python": sys.version, "mypy": "x", "modules": modules,
        "runtime": {"abc__mypyc": "abc__mypyc" + SUFFIX},
    }
    manifest.update(overrides)
    for rel in [*modules.values(), "abc__mypyc" + SUFFIX]:
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(b"")
    (directory / native.MANIFEST).write_text(json.dumps(manifest))
    return directory


def test_a_matching_build_is_usable_and_each_defect_is_named(tmp_path: Path) -> None:
    ok, paths = native.check(_fake_build(tmp_path / "ok"))
    assert ok.active and ok.modules == len(native.MODULES)
    assert set(paths) == {*native.MODULES, "abc__mypyc"}
    cases = {
        "stale": {"fingerprint": "0" * 64},
        "another Python": {"ext_suffix": ".cpython-27.so"},
        "another module list": {"modules": {"dualpath.sim.events": "x" + SUFFIX}},
        "manifest version": {"version": 99},
        "unreadable manifest": {"modules": 7},
    }
    for expected, override in cases.items():
        status, paths = native.check(_fake_build(tmp_path / expected.replace(" ", "_"), **override))
        assert not status.active and expected in status.reason, (expected, status)
        assert paths == {}
    assert "no native build" in native.check(tmp_path / "absent")[0].reason
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / native.MANIFEST).write_text("{not json")
    assert "unreadable manifest" in native.check(tmp_path / "garbage")[0].reason
    broken = _fake_build(tmp_path / "missing")
    (broken / ("dualpath/sim/link" + SUFFIX)).unlink()
    assert "missing" in native.check(broken)[0].reason


def test_the_fingerprint_covers_every_dependency_source_and_only_those(tmp_path: Path) -> None:
    root = tmp_path / "dualpath"
    for rel in ("core/a.py", "scheduler/b.py", "sim/c.py", "workload/d.py", "server/e.py",
                "sim/_native/dualpath/sim/c.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    base = native.fingerprint(root)
    (root / "server/e.py").write_text("x = 2\n")  # not something the simulator imports
    (root / "sim/_native/dualpath/sim/c.py").write_text("x = 2\n")  # the build's own files
    assert native.fingerprint(root) == base
    for rel in ("core/a.py", "scheduler/b.py", "sim/c.py", "workload/d.py"):
        (root / rel).write_text("x = 3\n")
        assert native.fingerprint(root) != base, rel
        (root / rel).write_text("x = 1\n")
    assert native.fingerprint(root) == base
    (root / "sim/new.py").write_text("")
    assert native.fingerprint(root) != base


def test_activation_refuses_to_mix_with_modules_already_imported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dualpath.sim.simulator  # noqa: F401  (imported as pure Python in this process)

    before = list(sys.meta_path)
    monkeypatch.setattr(native, "_active", None)  # whatever this process did before
    monkeypatch.delenv(native.ENV, raising=False)
    status = native.activate(_fake_build(tmp_path / "ok"))
    assert not status.active and "imported before activation" in status.reason
    assert sys.meta_path == before and os.environ.get(native.ENV) is None
    monkeypatch.setenv(native.ENV, "0")
    status = native.activate(tmp_path / "ok")
    assert not status.active and status.reason == f"{native.ENV}=0"
    assert sys.meta_path == before


def test_a_build_that_fails_to_load_leaves_everything_pure(tmp_path: Path) -> None:
    # The fake build matches the sources but its extensions are empty files.
    env = {**os.environ, native.ENV: "1", native.DIR_ENV: str(_fake_build(tmp_path / "b"))}
    code = ("import sys, dualpath.sim.simulator as s; from dualpath.sim import native; "
            "print(native.status().reason); print(s.__file__); "
            "print(any(type(f).__name__ == '_NativeFinder' for f in sys.meta_path))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reason, path, finder = proc.stdout.strip().splitlines()
    assert "failed to load" in reason and path.endswith(".py") and finder == "False"


def test_build_refuses_to_replace_what_is_not_a_build(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NativeBuildError, match="is a file"):
        native.build(tmp_path / "file")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("mine")
    with pytest.raises(NativeBuildError, match="holds no native build"):
        native.build(tmp_path / "work")
    assert (tmp_path / "work" / "notes.txt").read_text() == "mine"


# A small simulation of every system with every decision logged: what the compiled modules
# must reproduce exactly (the timing fields aside).
_RUN = r"""
import json, sys
from dualpath.core.systems import SYSTEM_NAMES
from dualpath.sim import native
from dualpath.sim.api import simulate
from dualpath.sim.config import SimConfig
from dualpath.workload.generator import generate
import dualpath.sim.simulator as simulator, dualpath.scheduler.dualpath_policy as policy
trajs = generate("64k", 96, 3)
turns = [(0.0, [(t.append_tokens, t.gen_tokens) for t in tr.turns][:6]) for tr in trajs]
out = {"files": [simulator.__file__, policy.__file__], "native": native.status().as_dict(),
       "reports": {}}
for system in SYSTEM_NAMES:
    r = simulate(SimConfig(model="ds-660b", system=system, pd=(2, 4), seed=0,
                           log_decisions=True), turns)
    rep = {k: v for k, v in r.report.items()
           if k not in ("sim_events_per_s", "sim_wall_s", "sim_cpu_s", "sim_peak_rss_mb")}
    rep["records"] = [repr(x) for x in r.records]
    out["reports"][system] = rep
# Values that cross processes (sweeps, a user's pool) pickle and copy in both builds.
import copy, pickle
from dualpath.scheduler import GlobalScheduler
from dualpath.scheduler.charges import Charge
from dualpath.scheduler.types import ClusterView, EngineState, NodeState, RequestInfo
from dualpath.workload.metrics import SLO
view = ClusterView.build([EngineState(0, 0, "prefill", 1, 5), EngineState(1, 1, "decode", 0, 0, 999)],
                         [NodeState(0, "prefill", 3), NodeState(1, "decode")])
req = RequestInfo(7, 100, 50, 1.5, 8)
result = GlobalScheduler().schedule([req], view)
p = result.placements[0]
values = [view, req, result, Charge.of(req, p.pe_engine, p.de_engine, p.pe_node, p.de_node, p.read),
          SLO(2.0, 0.1), *r.records[:3]]
back = pickle.loads(pickle.dumps(values))
out["roundtrip"] = [back == values, copy.deepcopy(values) == values, repr(back) == repr(values),
                    back[0].layout.engine_ids == view.layout.engine_ids, len(values)]
print(json.dumps(out, default=repr, sort_keys=True))
"""


def _run(env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", _RUN], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_compiled_simulator_gives_the_same_results(tmp_path: Path) -> None:
    pytest.importorskip("mypyc")
    if native._compiler() is None:
        pytest.skip("no C compiler")
    lines: list[str] = []
    manifest = native.build(tmp_path / "build", progress=lines.append)
    assert manifest.is_file() and any("compiled" in line for line in lines)
    env = {k: v for k, v in os.environ.items() if k not in (native.ENV, native.DIR_ENV)}
    pure = _run(env)
    compiled = _run({**env, native.ENV: "1", native.DIR_ENV: str(tmp_path / "build")})
    assert all(str(f).endswith(".py") for f in pure["files"])  # type: ignore[union-attr]
    assert all(str(f).endswith(SUFFIX) for f in compiled["files"])  # type: ignore[union-attr]
    assert compiled["native"]["active"] is True  # type: ignore[index]
    assert pure["native"]["active"] is False  # type: ignore[index]
    assert compiled["reports"] == pure["reports"]
    assert pure["roundtrip"] == compiled["roundtrip"] == [True, True, True, True, 8]
    # The CLI sees the build; an edited source makes it stale (here: a copy of the tree).
    cli = subprocess.run([sys.executable, "-m", "dualpath", "native", "status",
                          "--dir", str(tmp_path / "build")], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert cli.returncode == 0 and "usable" in cli.stdout, cli.stdout + cli.stderr
    tree = tmp_path / "tree"
    shutil.copytree(native.package_root(), tree / "dualpath",
                    ignore=shutil.ignore_patterns("__pycache__", "_native"))
    (tree / "dualpath" / "sim" / "link.py").write_text(
        (tree / "dualpath" / "sim" / "link.py").read_text() + "\n# edited\n")
    stale, paths = native.check(tmp_path / "build", root=tree / "dualpath")
    assert not stale.active and "stale" in stale.reason and paths == {}

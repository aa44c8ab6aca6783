"""The package graph of docs/architecture.md is what the imports really do.

Every `import` / `from ... import` in src/dualpath (module level and inside functions) is
parsed; an edge between two packages that is not in ALLOWED fails, and so does any cycle
between packages. `scheduler` and `sim` must not import torch, numpy, zmq, asyncio or sockets at all (they run
the same pure code in the runtime and the simulator), checked statically and by importing
them in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dualpath"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

# package -> the packages it may import (keep in step with docs/architecture.md).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "wire": {"core"},
    "kv": {"core"},
    "model": {"core"},
    "scheduler": {"core"},
    "workload": {"core"},
    "transfer": {"core", "wire"},
    "engine": {"core", "wire", "kv", "model", "transfer", "scheduler"},
    "sim": {"core", "scheduler", "workload"},
    "runtime": {"core", "wire", "kv", "model", "scheduler", "transfer"},
    "server": {"core"},
    "testbed": {"core"},
    "bench": {"core", "wire", "kv", "model", "transfer", "scheduler", "workload", "sim",
              "runtime", "server", "testbed"},
    "cli": {"core", "kv", "model", "workload", "sim", "runtime", "server", "bench", "testbed"},
}
PURE = ("scheduler", "sim")
FORBIDDEN_IN_PURE = ("torch", "numpy", "zmq", "asyncio", "socket")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dualpath":
                out += [f"dualpath.{a.name}" for a in node.names]
            else:
                out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def _package(path: Path) -> str | None:
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 else None  # top-level modules (__init__, __main__)


def _graph() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the files doing it."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(SRC.rglob("*.py")):
        pkg = _package(path)
        if pkg is None:
            continue
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] != "dualpath" or len(parts) < 2 or parts[1] == pkg:
                continue
            if parts[1] == "__version__":
                continue
            graph.setdefault(pkg, {}).setdefault(parts[1], []).append(str(path.relative_to(SRC)))
    return graph


def test_every_package_is_in_the_allowed_graph() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), "add new packages to ALLOWED and docs/architecture.md"


def test_imports_follow_the_allowed_graph() -> None:
    bad = [f"{pkg} -> {dep} ({', '.join(sorted(set(files)))})"
           for pkg, deps in _graph().items() for dep, files in deps.items()
           if dep not in ALLOWED[pkg]]
    assert not bad, "imports outside docs/architecture.md's graph:\n" + "\n".join(bad)


def test_the_package_graph_has_no_cycle() -> None:
    graph = {pkg: set(deps) for pkg, deps in _graph().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("package cycle: " + " -> ".join([*trail, node, dep]))
            if state.get(dep) is None:
                visit(dep, [*trail, node])
        state[node] = 2

    for pkg in sorted(graph):
        if pkg not in state:
            visit(pkg, [])
    # The allowed graph itself is acyclic, so no change to it can smuggle a cycle in.
    graph = {k: set(v) for k, v in ALLOWED.items()}
    state.clear()
    for pkg in sorted(graph):
        if pkg not in state:
            visit(pkg, [])


def test_pure_packages_import_no_torch_numpy_zmq_asyncio_or_sockets() -> None:
    found = [f"{path.relative_to(SRC)}: {module}"
             for pkg in PURE for path in sorted((SRC / pkg).rglob("*.py"))
             for module in _imports(path)
             if module.split(".")[0] in FORBIDDEN_IN_PURE]
    assert not found, found
    check = ("import json, sys; import dualpath.scheduler, dualpath.sim, dualpath.sim.api; "
             f"print(json.dumps([m for m in {FORBIDDEN_IN_PURE!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_architecture_doc_lists_the_same_graph() -> None:
    """docs/architecture.md has one line per package: `pkg ← dep, dep` (or `pkg ← —`)."""
    text = ARCHITECTURE.read_text()
    documented: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*`?([a-z]+)/?`?\s+←\s+(.*)$", line)
        if m and m.group(1) in ALLOWED:
            deps = m.group(2).strip().strip("`")
            documented[m.group(1)] = set() if deps in ("—", "-", "") else {
                d.strip().strip("`/") for d in deps.split(",")}
    assert documented == ALLOWED
    assert len(text.splitlines()) <= 60, "architecture.md must stay one screen"


def test_no_source_file_is_over_400_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long

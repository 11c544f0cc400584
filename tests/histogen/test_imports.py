"""The import graph of the project's packages: every module imports on its own, and no module
depends on itself through others. Imports inside functions count too: one placed there to break
a circle only hides it."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.support.data import ROOT

PACKAGES = ("engine", "histogen", "histosynth")

# In a fresh interpreter: import every module of the packages (a `__main__` only located: importing
# it runs its command); print {module: (file, is_package)}.
IMPORT_ALL = f"""
import importlib, importlib.util, json, pkgutil, sys
found = {{}}
for top in {PACKAGES!r}:
    pkg = importlib.import_module(top)
    found[top] = (pkg.__file__, True)
    for m in pkgutil.walk_packages(pkg.__path__, top + ".", onerror=lambda name: sys.exit(f"cannot import {{name}}")):
        if m.name.endswith(".__main__"):
            found[m.name] = (importlib.util.find_spec(m.name).origin, False)
        else:
            found[m.name] = (getattr(importlib.import_module(m.name), "__file__", None), m.ispkg)
print(json.dumps(found))
"""


def imported(name: str, path: Path, is_pkg: bool, known: set[str]) -> set[str]:
    """The modules of `known` that module `name` imports anywhere in its source."""
    package = name if is_pkg else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    out = set()
    for t in targets:
        while t and t not in known:  # `import a.b.name` of a non-module: its module
            t = t.rpartition(".")[0]
        if t and t != name:
            out.add(t)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def import_graph(modules: dict[str, tuple[str | None, bool]]) -> dict[str, set[str]]:
    known = set(modules)
    return {name: imported(name, Path(file), is_pkg, known) for name, (file, is_pkg) in modules.items()
            if file and file.endswith(".py")}


def test_every_module_imports_and_no_import_circle():
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    modules = json.loads(r.stdout.splitlines()[-1])
    assert {"histogen.run", "histogen.models.registry", "engine.store", "histosynth"} <= set(modules)
    graph = import_graph(modules)
    assert not cycles(graph), "import circles: " + "; ".join(" <-> ".join(c) for c in cycles(graph))


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    pkg = tmp_path / "circ"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circ import b\n")
    (pkg / "b.py").write_text("def f():\n    from circ.a import g\n")
    (pkg / "c.py").write_text("from . import b\n")
    modules = {"circ": (str(pkg / "__init__.py"), True), **{f"circ.{m}": (str(pkg / f"{m}.py"), False) for m in "abc"}}
    graph = import_graph(modules)
    assert graph["circ.c"] == {"circ.b"} and graph["circ.b"] == {"circ.a"}
    assert cycles(graph) == [["circ.a", "circ.b"]]

"""The package's layout holds: layers point down (import-linter's contract in pyproject.toml),
no module imports another's private name, and no two modules import each other, even
through others or lazily inside a function.

The checks read the source (``ast``), so they cost no import of torch: a second or two.
Each checker is also run on a small made-up package with a known answer, so a checker that
stopped finding anything would fail here too.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "retrieval_head"


def modules(root: Path, package: str) -> dict[str, Path]:
    """``{"pkg.sub.mod": path}`` of every module of ``package`` under ``root`` (``__init__``
    as the package's own name)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of a ``from ... import`` in ``module`` (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, Path], package: str):
    """Every import of a package module by a package module, wherever it stands (a lazy
    import inside a function counts): ``(importer, imported module, names, line)``; a name
    that is itself a module (``from . import adaptive``) is reported as that module."""
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == package or a.name.startswith(package + "."):
                        yield mod, a.name, [], node.lineno
            elif isinstance(node, ast.ImportFrom):
                target = absolute(mod, is_package, node)
                if not (target == package or target.startswith(package + ".")):
                    continue
                names = [a.name for a in node.names]
                submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
                for sub in submodules:
                    yield mod, sub, [], node.lineno
                rest = [n for n in names if f"{target}.{n}" not in mods]
                if rest:
                    yield mod, target, rest, node.lineno


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(mods: dict[str, Path], package: str) -> list[str]:
    """``from X import _name`` where X is another module of the package, as
    ``"importer:line imports _name from X"``."""
    return [f"{mod}:{line} imports {n} from {target}" for mod, target, names, line in imports(mods, package)
            for n in names if private(n) and target != mod]


def cycles(mods: dict[str, Path], package: str) -> list[list[str]]:
    """The import cycles among the package's modules: one path per strongly connected
    component of more than one module (or a module importing itself), closed (first = last)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, target, _, _ in imports(mods, package):
        if target in graph and target != mod:
            graph[mod].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(cycle_path(graph, set(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_path(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """One closed path through the component (a breadth-first search back to its start)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


# ---------------------------------------------------------------- the checkers, on known answers


def make_package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        p = tmp_path / "pkg" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return modules(tmp_path, "pkg")


def test_checkers_find_a_private_import_and_a_cycle_in_a_made_up_package(tmp_path):
    mods = make_package(tmp_path, {
        "__init__.py": "from .a import __doc__, run\n",
        "a.py": "from .sub.b import _helper, public\nfrom . import c\n\ndef run():\n    return _helper()\n",
        "sub/__init__.py": "",
        "sub/b.py": "def _helper():\n    from ..a import run  # lazy: still a cycle\n",
        "c.py": "from .sub import b\n",
    })
    assert private_imports(mods, "pkg") == ["pkg.a:1 imports _helper from pkg.sub.b"]
    assert cycles(mods, "pkg") == [["pkg.a", "pkg.sub.b", "pkg.a"]]
    (tmp_path / "pkg" / "sub" / "b.py").write_text("def _helper():\n    return 1\n\ndef public():\n    pass\n")
    assert cycles(mods, "pkg") == []


def test_a_three_module_cycle_is_named_in_order(tmp_path):
    mods = make_package(tmp_path, {"__init__.py": "", "x.py": "from . import y\n", "y.py": "from .z import f\n",
                                   "z.py": "def f():\n    from .x import g\n"})
    assert cycles(mods, "pkg") == [["pkg.x", "pkg.y", "pkg.z", "pkg.x"]]


# ---------------------------------------------------------------- the package


def test_no_private_name_is_imported_across_modules():
    found = private_imports(modules(ROOT, PACKAGE), PACKAGE)
    assert not found, "give the shared piece a public name in the module it belongs to:\n" + "\n".join(found)


def test_no_import_cycle_among_the_modules():
    found = cycles(modules(ROOT, PACKAGE), PACKAGE)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_layers_point_down():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).is_file():
        pytest.skip("lint-imports (import-linter) is not installed")
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " 0 broken" in run.stdout and "BROKEN" not in run.stdout

"""docs/architecture.md's module table cannot drift from the package.

Each row of the table names a layer (first cell) and its modules (second cell), in
backticks. A row whose first cell names one subpackage lists that subpackage's modules
(``core`` + ``attend`` = ``core/attend``); a row naming no subpackage lists top-level modules,
in either cell (``options``, ``errors``; the entry modules ``compress``, ``heads``...). The
checks: every module of ``retrieval_head/`` (each ``.py`` but ``__init__`` and ``__main__``,
as ``subpackage/module``) is named, every name is a module, and the layers come in the order
of pyproject.toml's import contract.

    >>> doc = "| layer | modules | what |\\n|---|---|---|\\n| `core` | `attend`, `hook` | x |\\n| `errors` | | y |\\n"
    >>> [(r.layers, r.modules) for r in table_rows(doc, {"core"})]
    [(['core'], ['core/attend', 'core/hook']), (['errors'], ['errors'])]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "retrieval_head"
DOC = ROOT / "docs" / "architecture.md"


@dataclass
class Row:
    layers: list[str]  # the backticked names of the first cell
    modules: list[str]  # as "subpackage/module", or "module" at the top


def subpackages() -> set[str]:
    return {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def package_modules() -> set[str]:
    """Every module of the package as ``subpackage/module`` (or ``module`` at the top)."""
    return {p.relative_to(PACKAGE).with_suffix("").as_posix() for p in PACKAGE.rglob("*.py")
            if p.stem not in ("__init__", "__main__")}


def table_rows(text: str, subs: set[str]) -> list[Row]:
    """The rows of the first table whose header starts with ``| layer``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^\|\s*layer\b", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        layers, names = re.findall(r"`([\w/]+)`", cells[0]), re.findall(r"`([\w/]+)`", cells[1])
        packages = [n for n in layers if n in subs]
        assert len(packages) <= 1, f"one subpackage per row: {line}"
        modules = [f"{packages[0]}/{n}" for n in names] if packages else layers + names
        rows.append(Row(layers, modules))
    return rows


def rows() -> list[Row]:
    return table_rows(DOC.read_text(encoding="utf-8"), subpackages())


def test_the_table_is_read():
    """The extraction itself: a parser that found nothing could not fail."""
    found = [m for r in rows() for m in r.modules]
    assert {"core/attend", "engine/realrows", "headfiles/ranking", "options"} <= set(found)
    assert len(found) == len(set(found)), "a module named twice"


def test_every_module_of_the_package_is_in_the_table():
    missing = package_modules() - {m for r in rows() for m in r.modules}
    assert not missing, f"docs/architecture.md's table misses {sorted(missing)}"


def test_every_module_the_table_names_exists():
    stale = {m for r in rows() for m in r.modules} - package_modules()
    assert not stale, f"docs/architecture.md's table names modules that do not exist: {sorted(stale)}"


def test_every_subpackage_has_a_row_in_the_contracts_order():
    tomllib = pytest.importorskip("tomllib")
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contract if c["type"] == "layers")
    want = [sorted(n.removeprefix("retrieval_head.") for n in layer.split(" | ")) for layer in layers]
    got = [sorted(r.layers) for r in rows() if r.layers]
    assert got == want, "the table's layers are not the import contract's, top to bottom"
    assert subpackages() <= {n for r in rows() for n in r.layers}

"""``import retrieval_head`` imports no torch and no transformers (a command's ``--help`` stays
fast), while every public name still resolves, to the very object of its module.

The package's ``__init__`` names each public name twice: in the table its ``__getattr__``
imports from (PEP 562) and under ``TYPE_CHECKING`` (for readers, type checkers and the API
reference). The checks below read the second with ``ast`` and hold the first to it.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import retrieval_head

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")


def type_checking_imports() -> dict[str, tuple[str, str]]:
    """``{public name: (absolute module, name there)}`` of the imports under ``if TYPE_CHECKING:``
    in the package's ``__init__``."""
    tree = ast.parse((ROOT / "retrieval_head" / "__init__.py").read_text(encoding="utf-8"))
    blocks = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    out = {}
    for node in (n for b in blocks for n in b.body):
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.unparse(node)
        for a in node.names:
            out[a.asname or a.name] = (f"retrieval_head.{node.module}", a.name)
    return out


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_importing_the_package_imports_neither_torch_nor_transformers():
    r = run("import sys, retrieval_head\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"import retrieval_head imported {r.stdout.strip()}"


def test_a_public_name_imports_its_module_on_first_use():
    """The check above can fail: the same subprocess sees torch once a name is used."""
    r = run("import sys, retrieval_head\n"
            "from retrieval_head import HeadwiseCache\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), HeadwiseCache.__module__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['torch',", "'transformers']", "retrieval_head.core.headwise"]


def test_every_public_name_resolves_to_its_modules_object():
    names = type_checking_imports()
    assert len(names) >= 20 and "HeadwiseAttention" in names and "headwise_generate" in names
    assert sorted(retrieval_head.__all__) == sorted(names), "__all__ and the TYPE_CHECKING imports differ"
    for public, (module, attr) in names.items():
        assert getattr(retrieval_head, public) is getattr(importlib.import_module(module), attr), public
    assert set(retrieval_head.__all__) <= set(dir(retrieval_head))


def test_every_public_name_resolves_in_a_fresh_interpreter():
    """Each name by ``from retrieval_head import X``, in an interpreter that never imported it."""
    names = " ".join(retrieval_head.__all__)
    r = run("import retrieval_head\n"
            f"for n in {names!r}.split():\n"
            "    exec(f'from retrieval_head import {n}')\n"
            "print('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_an_unknown_name_is_an_attribute_error():
    assert not hasattr(retrieval_head, "no_such_name")
    with pytest.raises(ImportError):
        exec("from retrieval_head import no_such_name", {})

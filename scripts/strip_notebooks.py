"""Strip notebooks to their committed form: no outputs, no execution counts, no run metadata.

    .venv/bin/python scripts/strip_notebooks.py            # every notebooks/*.ipynb
    .venv/bin/python scripts/strip_notebooks.py --check    # exit 1 and name the ones not stripped

tests/test_notebook.py fails on a committed notebook that is not stripped; make test runs
the notebooks themselves from a clean kernel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def strip(nb) -> bool:
    """Strip ``nb`` in place; True when anything was removed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
        for key in ("execution", "ExecuteTime"):  # nbclient's and an extension's timings
            changed |= cell.metadata.pop(key, None) is not None
    changed |= nb.metadata.pop("widgets", None) is not None
    return changed


def main(argv: list[str]) -> int:
    check = "--check" in argv
    dirty = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            dirty.append(path)
            if not check:
                nbformat.write(nb, path)
    for path in dirty:
        print(f"{'not stripped' if check else 'stripped'}: {path.relative_to(ROOT)}")
    return 1 if check and dirty else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

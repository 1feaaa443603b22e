"""notebooks/: committed stripped, and run cell by cell from a clean kernel of this very
environment (the venv's ipykernel, ``kernel_name="python3"``), offline, with the checkout's
package; a failing cell fails the test with its traceback. Each notebook runs with its
working directory in a temporary folder, where it writes its outputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

pytestmark = pytest.mark.full  # the notebook runs in a kernel (~100 s): `make test` only

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # a cell that runs longer is stuck: the quickstart's longest takes ~10 s on one core


def test_committed_notebooks_are_stripped():
    assert [p.name for p in NOTEBOOKS] == ["quickstart.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        timed = [i for i, c in enumerate(nb.cells) if "execution" in c.metadata or "ExecuteTime" in c.metadata]
        assert not dirty and not timed and "widgets" not in nb.metadata, \
            f"{path.name}: cells {dirty or timed} hold outputs; run: python scripts/strip_notebooks.py"
        assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.slow
@pytest.mark.full  # runs the whole notebook in a fresh kernel: `make test` only
def test_quickstart_runs_from_a_clean_kernel(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    from retrieval_head.models.embedded import default_model_dir

    if not (default_model_dir() / "config.json").is_file():
        pytest.skip("default model not installed (run `make install`)")  # as the other real-model tests
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    # one more cell, not in the file: which interpreter and which package the kernel ran
    nb.cells.append(new_code_cell("import sys, retrieval_head\nprint(sys.prefix)\nprint(retrieval_head.__file__)"))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")  # the venv's kernelspec before a user-level one
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # connection files
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", IPYTHONDIR=str(tmp_path / "ipython"), MPLBACKEND="Agg")
    cwd = tmp_path / "work"
    cwd.mkdir()
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, startup_timeout=120,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env)  # raises CellExecutionError, with the cell's traceback, if any cell fails
    prefix, package = nb.cells[-1].outputs[0]["text"].split()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve()  # the kernel is this environment's python
    assert Path(package).resolve().parent == ROOT / "retrieval_head"  # ... running this checkout's package
    out = cwd / "quickstart_outputs"
    written = {p.name for p in out.iterdir()}
    for name in ("SmolLM2-135M-Instruct.json", "SmolLM2-135M-Instruct.heads.png",
                 "SmolLM2-135M-Instruct_compression.png"):
        assert name in written, sorted(written)
    shown = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) >= 2  # the heatmap and the compression curve displayed (sections added later may show more)

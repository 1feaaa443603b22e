"""Needle-test results read back: a condition folder's trial records (the original's one JSON
file per (length, depth) cell, ``record_path``), and what a set of records was scored by
(``metric_of``) and ran (``task_of``). The heatmaps, the compression curve, the leaderboard
and the judge read results here.

A results folder holds one JSON file per trial::

    {"model": "SmolLM2-135M-Instruct", "context_length": 2000, "depth_percent": 50.0,
     "score": 100.0, "mask": {"kind": "top", "k": 10, "mode": "uniform", "phase": "decode", ...}, ...}

``read_trials`` ignores files named ``manifest.json`` and files without ``context_length``,
``depth_percent`` and ``score``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("context_length", "depth_percent", "score")
SINGLE = "single needle"


@dataclass(frozen=True)
class Metric:
    """How a task is scored: the records' ``field`` and its name on a figure."""

    field: str
    label: str


ROUGE = Metric("score", "ROUGE-1 recall x100")
MATCH = Metric("string_match", "string match x100")


def metric_of(records: list[dict]) -> Metric:
    """The metric of the records' task: a generated task's records carry RULER's string match
    and are scored by it; the single needle's by the ROUGE-1 recall of its answer.

    >>> metric_of([{"score": 50.0}]).label, metric_of([{"score": 0.0, "string_match": 100.0}]).field
    ('ROUGE-1 recall x100', 'string_match')
    """
    return MATCH if records and all(MATCH.field in r for r in records) else ROUGE


def task_of(records: list[dict]) -> str:
    """The task the records ran, as a figure names it.

    >>> task_of([{"score": 1.0}]), task_of([{"task": "multikey"}])
    ('single needle', 'multikey')
    """
    return " + ".join(sorted({SINGLE if r.get("task", "single") == "single" else r["task"] for r in records}))


def record_path(folder: Path, model: str, key) -> Path:
    """The original's file name for one (length, depth) result (``key``: a trial key, with
    ``context_length`` and ``depth_percent``).

    >>> from types import SimpleNamespace
    >>> record_path(Path("r"), "M", SimpleNamespace(context_length=1000, depth_percent=0.5)).name
    'M_len_1000_depth_50.0.json'
    """
    return folder / f"{model}_len_{key.context_length}_depth_{key.depth_percent * 100}.json"


def read_records(folder: Path, model: str, keys) -> list[dict]:
    """The records of ``keys``' cells in ``folder``, in ``keys``' order (each must exist)."""
    return [json.loads(record_path(folder, model, key).read_text()) for key in keys]


def read_trials(folder: Path) -> list[dict]:
    """Every trial record in ``folder`` (sorted by file name)."""
    trials = []
    for path in sorted(folder.glob("*.json")):
        if path.name == "manifest.json":
            continue
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("skipping %s: not JSON", path)
            continue
        if not isinstance(rec, dict) or not all(key in rec for key in REQUIRED_KEYS):
            continue
        if not all(isinstance(rec[key], (int, float)) for key in REQUIRED_KEYS):
            log.warning("skipping %s: context_length, depth_percent or score is not a number", path)
            continue
        trials.append(rec)
    return trials

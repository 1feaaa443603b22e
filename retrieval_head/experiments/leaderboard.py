"""The press leaderboard: presses x budgets x tasks on one model, over a grid of lengths x depths.

Every press of ``--press`` keeps each ``--budget`` of the KV cache (``press.press_conditions``:
a folder per press and budget, ``<model>_press_<name>[-<ranking>]_b<F>`` plus the task's
suffix); the full cache (folder ``<model>``) is the reference, and so is ``duo@random``: Duo
ranking heads at random (seeded), which a head file must beat. Each task runs as one needle
test (``cli.mask.run_task``: resumable, one record per cell and condition), so every condition
shares each prompt's one plain prefill (``engine.pressed``).

The table (``board``): per task, a row per press and a column per budget; a cell is the mean
of the task's metric over the grid's cells (``store.results.metric_of``: ROUGE-1 recall for the
single needle, string match for the generated tasks), its 95 % percentile bootstrap interval
over the cells (``analysis.stability.mean_interval``, seeded) and the share of the full
cache's bytes the kept keys hold (predicted from the keep sets, mean over the cells)::

    >>> cell([{"score": 100.0, "mask": {"kv_kept": 0.25}}, {"score": 0.0, "mask": {"kv_kept": 0.25}}], "score")
    (50.0, 0.0, 100.0, 0.25)
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from ..analysis.stability import mean_interval
from ..errors import UserError
from ..models.shape import ModelShape
from ..store.results import metric_of, task_of
from ..vocabulary import RANKED_PRESSES
from .leaderboard_settings import RANDOM, LeaderboardSettings
from .mask import Condition
from .press import kv_scores, press_conditions, random_ranking

log = logging.getLogger(__name__)

Row = tuple[str, list[Condition]]  # an entry's label, its conditions (one per budget)


def ranking_file(st: LeaderboardSettings, model_name: str, method: str | None = None) -> Path:
    """``--head_score`` (else ``head_score/<model>.kv_max.json``), or a method's file beside it."""
    base = Path(st.head_score) if st.head_score else Path("head_score") / f"{model_name}.kv_max.json"
    return base if method is None else base.parent / f"{model_name}.{method}.json"


def entry_label(name: str, ranking: str | None) -> str:
    return name if ranking is None else f"{name}@{ranking}"


def board_conditions(st: LeaderboardSettings, model_name: str, shape: ModelShape) -> tuple[list[Row], list[str]]:
    """The full cache's condition and each entry's (one per budget), and a note per entry
    skipped (a method's head file missing). A press that ranks heads by ``--head_score`` needs
    that file: refused in one line when it is missing, before the model loads."""
    rows: list[Row] = [("full", [Condition("none", 0, None, folder=model_name)])]
    notes = []
    for name, ranking in st.entries():
        scores = seed = None
        if name in RANKED_PRESSES and ranking == RANDOM:
            scores, seed = random_ranking(shape, st.seed), st.seed
        elif name in RANKED_PRESSES:
            path = ranking_file(st, model_name, ranking)
            if not path.exists():
                if ranking is not None:
                    notes.append(f"{entry_label(name, ranking)} skipped: no {path}")
                    continue
                raise UserError(f"--press {name} ranks heads by a head file: pass --head_score FILE (there is no "
                                f"{path}), or drop {name} from --press")
            scores = kv_scores(path, shape)
        rows.append((entry_label(name, ranking),
                     press_conditions(model_name, name, st.budget, shape, scores, phase=st.phase, ranking=ranking,
                                      seed=seed)))
    return rows, notes


def cell(records: list[dict], field: str, draws: int = 1000, seed: int = 0) -> tuple[float, float, float, float]:
    """(mean, lo, hi, bytes share) of one condition's records (the module's docstring)."""
    mean, lo, hi = mean_interval([r[field] for r in records], draws, seed)
    share = statistics.fmean(r["mask"].get("kv_kept", 1.0) for r in records) if records else float("nan")
    return mean, lo, hi, share


def points(rows: list[Row], results: dict[str, list[dict]], draws: int, seed: int) -> dict:
    """A task's numbers: ``{"metric": Metric, "full": cell, "presses": {label: [(budget, cell)]}}``."""
    every = [r for recs in results.values() for r in recs]
    metric = metric_of(every)
    out = {"metric": metric, "task": task_of(every), "presses": {}}
    for label, conditions in rows:
        cells = [(c.mask.budget if c.mask is not None else 1.0, cell(results[c.folder], metric.field, draws, seed))
                 for c in conditions]
        if label == "full":
            out["full"] = cells[0][1]
        else:
            out["presses"][label] = cells
    return out


def fmt(c: tuple[float, float, float, float]) -> str:
    mean, lo, hi, share = c
    return f"{mean:.1f} [{lo:.1f}, {hi:.1f}] · {100 * share:.1f}%"


def board(model_name: str, budgets, tasks: list[tuple[str, dict]], cells: int, draws: int, seed: int,
          notes: list[str] = ()) -> str:
    """The leaderboard as markdown: a table per task (``points``), the full cache above it."""
    lines = [f"# {model_name}: KV-cache presses", "",
             f"Each cell: the mean of the task's metric over the grid's {cells} cells (lengths x depths), its 95 % "
             f"percentile bootstrap interval over those cells ({draws} resamples, seed {seed}) · the share of the "
             "full cache's bytes the kept keys hold (predicted from the press's keep sets; mean over the cells). "
             "Columns: the budget, the share of the KV cache each press may keep.", ""]
    lines += [f"Note: {n}." for n in notes] + ([""] if notes else [])
    for _, p in tasks:
        lines += [f"## {p['task']} ({p['metric'].label})", "", f"full cache: {fmt(p['full'])}", "",
                  "| press | " + " | ".join(f"{b:g}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for label, cs in p["presses"].items():
            by = dict(cs)
            lines.append(f"| {label} | " + " | ".join(fmt(by[b]) if b in by else "—" for b in budgets) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(p: dict, model_name: str, out_png: Path) -> Path:
    """Score against the bytes the kept keys hold: a line per press over its budgets (the
    intervals as error bars), the full cache a horizontal line."""
    from ..plots.leaderboard import board_figure
    from ..plots.niah import render

    title = f"{model_name}, {p['task']}: {p['metric'].label} vs KV cache held"
    return render(board_figure(p["presses"], p["full"], p["metric"].label, title), out_png)

"""Needle-in-a-haystack heatmaps from a results folder, in the original's look.

A results folder holds one JSON file per trial::

    {"model": "SmolLM2-135M-Instruct", "context_length": 2000, "depth_percent": 50.0,
     "score": 100.0, "mask": {"kind": "top", "k": 10, "mode": "uniform", "phase": "decode", ...}, ...}

Files named ``manifest.json`` and files without ``context_length``, ``depth_percent`` and
``score`` are ignored. Worked example: a folder with three trials at 1000 tokens scoring
100 (depth 0), 50 (depth 50) and 0 (depth 50) gives depths ``[0, 50]``, lengths
``[1000]``, cells ``[[100], [25]]`` (the mean of the trials in each cell) and an overall
mean of 50 (the mean over trials). The value drawn is the task's metric (``store.results.metric_of``): the
single needle's ``score`` (ROUGE-1 recall x100, the original's), a generated RULER-style
task's ``string_match`` (x100, RULER's); every title names the model, the task, the metric
and the condition::

    >>> grid = load_results("results/SmolLM2_top10")        # doctest: +SKIP
    >>> grid.scores, grid.mean                               # doctest: +SKIP
    (array([[100.], [25.]]), 50.0)
    >>> heatmap("results/SmolLM2_top10")                     # doctest: +SKIP
    PosixPath('results/SmolLM2_top10/heatmap.png')

From the shell (the command is ``cli.plot``)::

    retrieval-head plot results/SmolLM2_top10                   # its heatmap.png
    retrieval-head plot results/SmolLM2_none results/SmolLM2_top10 --out cmp.png

Figures are drawn on ``matplotlib.figure.Figure`` objects and rendered by the Agg canvas,
so importing this module never changes the pyplot backend of a notebook.
"""

from __future__ import annotations

import io
import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.text import Text

from ..engine.progress import count
from ..errors import UserError
from ..store.files import write_atomic
from ..store.results import ROUGE, SINGLE, metric_of, read_trials, task_of
from ..vocabulary import SIDE_BY_SIDE

log = logging.getLogger(__name__)

NIAH_CMAP = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
DEFAULT_SIDE_BY_SIDE = Path(SIDE_BY_SIDE)


@dataclass
class ResultGrid:
    """Mean score per (depth, length) cell of one results folder; NaN where no trial ran."""

    folder: Path
    depths: np.ndarray    # sorted unique depth percents (rows)
    lengths: np.ndarray   # sorted unique context lengths (columns)
    scores: np.ndarray    # [len(depths), len(lengths)] mean score, NaN where missing
    mean: float           # mean over all trials
    n_trials: int
    model: str
    mask: str             # e.g. "top-10 heads masked (uniform, decode)"
    baseline: bool        # True when no heads are masked
    task: str = SINGLE    # "single needle" or a generated task's name (``task_of``)
    metric: str = ROUGE.label  # what a cell holds (``metric_of``)

    def title(self) -> str:
        return f"{self.model}, {self.task}: {self.metric}, {self.mask}; mean {self.mean:.1f}"


def describe_mask(mask: dict | None) -> str:
    """A short human description of a trial's ``mask`` field, as the run's table says it.

    >>> describe_mask({"kind": "top", "k": 10, "mode": "uniform", "phase": "decode"})
    'top-10 heads masked (uniform, decode)'
    >>> describe_mask({"kind": "none", "k": 0})
    'no heads masked'
    >>> describe_mask({"kind": "keep_top", "k": 9, "unit": "kv", "mode": "stream", "sink": 4, "recent": 64,
    ...                "phase": "decode"})
    'keep top-9 KV heads full, rest streamed (4+64, decode)'
    >>> describe_mask({"kind": "keep_top", "k": 0, "mode": "stream", "sink": 4, "recent": 64, "phase": "all"})
    'every head streamed (4+64, all)'
    >>> describe_mask({"kind": "press", "k": 0, "press": "snapkv", "budget": 0.25, "phase": "decode"})
    'press snapkv keeping 25% of the KV cache (decode)'
    """
    if is_unmasked(mask):
        return "no heads masked"
    if "press" in mask:
        by = f" by {mask['method']} heads" if mask.get("method") else ""
        return f"press {mask['press']}{by} keeping {mask['budget']:.0%} of the KV cache ({mask.get('phase')})"
    k = mask.get("k", len(mask.get("heads") or []))
    unit = "KV heads" if mask.get("unit") == "kv" else "heads"
    seed = f", seed {mask['seed']}" if "random" in str(mask.get("kind")) and mask.get("seed") is not None else ""
    if mask.get("mode") == "stream":  # --keep_full: the heads kept are named, the rest streamed
        what = "every head streamed" if k == 0 else \
            f"{str(mask.get('kind', 'keep')).replace('keep_', 'keep ')}-{k} {unit} full, rest streamed"
        return f"{what} ({mask.get('sink')}+{mask.get('recent')}, {mask.get('phase')}{seed})"
    extra = [str(mask[key]) for key in ("mode", "phase") if mask.get(key) is not None]
    suffix = f" ({', '.join(extra)}{seed})" if extra else (f" ({seed[2:]})" if seed else "")
    return f"{mask.get('kind', 'masked')}-{k} {unit} masked{suffix}"


def is_unmasked(mask: dict | None) -> bool:
    """No mask, kind ``none`` or ``k == 0`` masked heads: the baseline run (streaming every
    head, ``--keep_full 0``, keeps none full, and a press compresses: neither is a baseline)."""
    if mask and "press" in mask:
        return False
    return not mask or mask.get("kind") == "none" or (mask.get("k") == 0 and mask.get("mode") != "stream")


def _joined(values: list[str], what: str, folder: Path) -> str:
    unique = sorted(set(values))
    if len(unique) > 1:
        log.warning("%s mixes %d %ss: %s", folder, len(unique), what, "; ".join(unique))
    return " + ".join(unique)


def load_results(folder: str | Path) -> ResultGrid:
    """The depth x length grid of mean scores of one results folder (see module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder {folder} does not exist; pass a folder of trial JSON files")
    trials = read_trials(folder)
    if not trials:
        raise UserError(
            f"results folder {folder} holds no trial files (JSON with context_length, depth_percent, score)"
        )
    metric = metric_of(trials)
    depths = np.array(sorted({float(t["depth_percent"]) for t in trials}))
    lengths = np.array(sorted({int(t["context_length"]) for t in trials}))
    total = np.zeros((len(depths), len(lengths)))
    ran = np.zeros_like(total)
    for t in trials:
        r = np.searchsorted(depths, float(t["depth_percent"]))
        c = np.searchsorted(lengths, int(t["context_length"]))
        total[r, c] += t[metric.field]
        ran[r, c] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(ran > 0, total / ran, np.nan)
    return ResultGrid(
        folder=folder, depths=depths, lengths=lengths, scores=scores,
        mean=float(np.mean([t[metric.field] for t in trials])), n_trials=len(trials),
        model=_joined([str(t.get("model", "unknown model")) for t in trials], "model", folder),
        mask=_joined([describe_mask(t.get("mask")) for t in trials], "mask", folder),
        baseline=all(is_unmasked(t.get("mask")) for t in trials), task=task_of(trials), metric=metric.label,
    )


def _fmt_depth(d: float) -> str:
    return f"{round(d, 1):g}"


def _draw(ax, scores, depths, lengths, cmap, vmin, vmax, cbar: str | None = None):
    """One seaborn heatmap panel in the original's style; cells with no trial are hatched;
    ``cbar``: its colour bar's label (none: no bar)."""
    ax.set_facecolor("white")
    ax.patch.set_hatch("///")
    ax.patch.set_edgecolor("lightgrey")
    sns.heatmap(
        scores, ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, cbar=cbar is not None,
        cbar_kws={"label": cbar} if cbar else None, linewidths=0.5, linecolor="grey",
        xticklabels=[str(int(n)) for n in lengths], yticklabels=[_fmt_depth(d) for d in depths],
    )
    ax.set_xlabel("Token Limit")
    ax.set_ylabel("Depth Percent")
    ax.tick_params(axis="x", labelrotation=45)
    ax.tick_params(axis="y", labelrotation=0)


def render(fig: Figure, out_png: str | Path) -> Path:
    """PNG bytes of ``fig`` (100 dpi, Agg canvas) written atomically to ``out_png``; returns
    the path. Every figure of the package is written here (``heads`` too)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(Path(out_png), buf.getvalue())
    log.info("wrote %s", out_png)
    return Path(out_png)


def figure_title(fig: Figure, text: str, margin: float = 0.95) -> Text:
    """``fig.suptitle(text)``, wrapped at spaces until every line fits in ``margin`` of the
    figure's width, measured by the Agg renderer at the figure's dpi; returns the title.

    Centred on the figure, not on the axes: beside a colour bar the axes sit left of centre,
    so even an axes title as wide as the figure would run off its left edge. Hyphens do not
    break lines ("SmolLM2-135M-Instruct" stays whole unless it alone is too wide).

    >>> fig = Figure(figsize=(4, 3))
    >>> print(figure_title(fig, "a title too long for a figure four inches wide wraps at spaces").get_text())
    a title too long for a figure four inches wide
    wraps at spaces
    """
    FigureCanvasAgg(fig)  # measure with the renderer that will draw it
    title = fig.suptitle(text)
    renderer = fig.canvas.get_renderer()
    room = margin * fig.bbox.width
    lines = text.splitlines() or [""]
    chars = max(len(line) for line in lines)
    while chars > 1 and title.get_window_extent(renderer).width > room:
        chars -= 1
        title.set_text("\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in lines))
    return title


def _panel_size(n_depths: int, n_lengths: int) -> tuple[float, float]:
    """Inches for one panel: grows with the grid, capped at the original's 17.5 x 8."""
    return max(5.0, min(17.5, 2.5 + 0.5 * n_lengths)), max(3.5, min(8.0, 1.8 + 0.5 * n_depths))


def _wrap(text: str, width: int = 32) -> str:
    """Panel titles side by side must not run into each other."""
    return "\n".join(textwrap.wrap(text, width))


def heatmap_figure(grid: ResultGrid, title: str | None = None) -> Figure:
    """One results grid's NIAH heatmap; the title defaults to ``grid.title()``."""
    fig = Figure(figsize=_panel_size(len(grid.depths), len(grid.lengths)), layout="constrained")
    ax = fig.add_subplot()
    _draw(ax, grid.scores, grid.depths, grid.lengths, NIAH_CMAP, 0, 100, cbar=grid.metric)
    figure_title(fig, title if title is not None else grid.title())
    return fig


def heatmap(folder: str | Path, out_png: str | Path | None = None, title: str | None = None) -> Path:
    """Draw one folder's NIAH heatmap; default output ``<folder>/heatmap.png``. Returns the path."""
    grid = load_results(folder)
    out = Path(out_png) if out_png is not None else grid.folder / "heatmap.png"
    return render(heatmap_figure(grid, title), out)


def _aligned(grid: ResultGrid, depths: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``grid.scores`` placed on the (depths, lengths) axes, NaN where the grid has no cell."""
    out = np.full((len(depths), len(lengths)), np.nan)
    rows = np.searchsorted(depths, grid.depths)
    cols = np.searchsorted(lengths, grid.lengths)
    out[np.ix_(rows, cols)] = grid.scores
    return out


def side_by_side_title(grids: list[ResultGrid]) -> str:
    """The figure's title: the model(s), task(s) and metric(s) of the panels and how many
    conditions they show (each panel's title names its own)."""
    joined = lambda values: " + ".join(dict.fromkeys(values))  # noqa: E731
    return (f"{joined(g.model for g in grids)}, {joined(g.task for g in grids)}: {joined(g.metric for g in grids)} "
            f"under {count(len(grids), 'condition')} of masking")


def side_by_side(dirs: list[str | Path], out_png: str | Path) -> Path:
    """Several folders in one figure (``side_by_side_figure``), written to ``out_png``."""
    return render(side_by_side_figure([load_results(d) for d in dirs]), Path(out_png))


def side_by_side_figure(grids: list[ResultGrid]) -> Figure:
    """Several grids in one figure; with a no-mask baseline, a second row of differences."""
    base = next((g for g in grids if g.baseline), None)
    if sum(g.baseline for g in grids) > 1:
        log.warning("several no-mask folders; differences are taken against %s", base.folder)
    diff_row = base is not None and any(g is not base for g in grids)
    depths = np.array(sorted({d for g in grids for d in g.depths}))
    lengths = np.array(sorted({n for g in grids for n in g.lengths}))
    w, h = _panel_size(len(depths), len(lengths))
    nrows, ncols = 1 + diff_row, len(grids)
    fig = Figure(figsize=(w * ncols * 0.8, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, g in enumerate(grids):
        _draw(axes[0, i], _aligned(g, depths, lengths), depths, lengths, NIAH_CMAP, 0, 100)
        axes[0, i].set_title(f"{g.model}\n{_wrap(g.mask)}\nmean {g.mean:.1f}")
    metric = " + ".join(dict.fromkeys(g.metric for g in grids))
    fig.colorbar(axes[0, 0].collections[0], ax=list(axes[0]), label=metric)
    if diff_row:
        base_scores = _aligned(base, depths, lengths)
        for i, g in enumerate(grids):
            ax = axes[1, i]
            if g is base:
                ax.axis("off")
                continue
            diff = _aligned(g, depths, lengths) - base_scores
            # vmin/vmax symmetric about 0 centre RdBu's white at 0 (seaborn's center= only
            # resamples the colormap to the same result, with a deprecation warning)
            _draw(ax, diff, depths, lengths, "RdBu", -100, 100)
            cell_mean = float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan")
            ax.set_title(f"{_wrap(g.mask + ' minus no mask')}\nmean cell difference {cell_mean:+.1f}")
        diff_axes = [axes[1, i] for i, g in enumerate(grids) if g is not base]
        fig.colorbar(diff_axes[0].collections[0], ax=list(axes[1]), label=f"{metric}: difference")
    figure_title(fig, side_by_side_title(grids))
    return fig

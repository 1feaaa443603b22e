"""Figures of head files: a layers x heads heatmap with the top heads outlined (``heads_figure``,
``heads heatmap``) and the agreement matrices of ``analysis.compare.compare_all``
(``compare_figure``, ``heads compare`` of three files or more)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure


def compare_figure(r: dict, out_png: str | Path, title: str | None = None) -> Path:
    """Two matrices side by side: top-k overlap (counts) and Spearman, a row and column per file."""
    import seaborn as sns
    from matplotlib.figure import Figure

    from .niah import figure_title, render

    names, n = r["names"], len(r["names"])
    fig = Figure(figsize=(3.2 + 1.6 * n, 1.6 + 0.55 * n), layout="constrained")
    for i, (key, fmt, vmax, vmin, cmap) in enumerate((("overlap", "d", r["k"], 0, "viridis"),
                                                     ("spearman", ".2f", 1.0, -1.0, "vlag"))):
        ax = fig.add_subplot(1, 2, i + 1)
        sns.heatmap(r[key], ax=ax, annot=True, fmt=fmt, cmap=cmap, vmin=vmin, vmax=vmax, square=True,
                    xticklabels=names, yticklabels=names, cbar=False, annot_kws={"fontsize": 8})
        ax.set_title(f"top-{r['k']} overlap" if key == "overlap" else "Spearman (all heads)", fontsize=10)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.tick_params(axis="y", labelrotation=0, labelsize=8)
    if title:
        figure_title(fig, title)
    return render(fig, out_png)


def heads_figure(scores: torch.Tensor, title: str | None = None, mark_top: int = 5,
                 label: str = "retrieval score (mean over trials)") -> Figure:
    """Layers x heads heatmap (y = layer, 0 at the top; x = head), viridis; the top
    ``mark_top`` heads are outlined in red; the title is wrapped to the figure's width;
    ``label``: the colour bar's (what the scores are, ``scored_by``)."""
    import seaborn as sns
    import torch
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from ..headfiles.ranking import top_heads
    from .niah import figure_title

    s = torch.as_tensor(scores, dtype=torch.float64)
    if s.dim() != 2:
        raise UserError(f"heads_heatmap needs a [layers, heads] grid, got shape {tuple(s.shape)}")
    layers, heads = s.shape
    size = (min(16.0, 3.0 + 0.3 * heads), min(14.0, 1.5 + 0.28 * layers))
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    sns.heatmap(s.numpy(), ax=ax, cmap="viridis", vmin=0.0, vmax=max(float(s.max()), 1e-9),
                cbar_kws={"label": label},
                xticklabels="auto", yticklabels="auto")
    for l, h, _ in top_heads(s, min(mark_top, s.numel())):
        ax.add_patch(Rectangle((h, l), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xlabel("Head")
    ax.set_ylabel("Layer")
    ax.tick_params(axis="y", labelrotation=0)
    if title:
        figure_title(fig, title)
    return fig


def heads_heatmap(scores: torch.Tensor, out_png: str | Path, title: str | None = None,
                  mark_top: int = 5, label: str = "retrieval score (mean over trials)") -> Path:
    """``heads_figure`` written atomically as a PNG to ``out_png``; returns the path."""
    from .niah import render

    return render(heads_figure(scores, title, mark_top, label), out_png)

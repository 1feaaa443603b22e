"""The causal judge's figure (``experiments.judge``'s ``summary``): score vs K (heads masked) or,
with a press, vs the budget it keeps; a line per method, random as a min-max band, the ceiling
(nothing masked, the full cache) dashed."""

from __future__ import annotations

import statistics
from pathlib import Path

from matplotlib.figure import Figure

from .niah import figure_title, render


def figure(s: dict, ks, out_png: Path, title: str, ylabel: str = "ROUGE-1 recall x100",
           press: str | None = None) -> Path:
    """``judge_figure`` written to ``out_png``."""
    return render(judge_figure(s, ks, title, ylabel, press), out_png)


def judge_figure(s: dict, ks, title: str, ylabel: str = "ROUGE-1 recall x100", press: str | None = None):
    """Score vs K: a line per method, random as a min-max band around its mean, none dashed;
    ``ylabel``: the task's metric. ``press``: score vs the budget the press keeps (the full
    cache dashed; higher wins)."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ks = list(ks)
    line, rnd, ceiling, xlabel = ("top-K {}", "random-K", "no heads masked", "K (heads masked)") if press is None \
        else (f"{press} by {{}}", f"{press} by random", "full cache", "budget (share of the KV cache kept)")
    for m, v in s.items():
        if m not in ("none", "random"):
            ax.plot(ks, [v[k] for k in ks], marker="o", label=line.format(m))
    rand = s["random"]
    lo, hi = [min(rand[k]) for k in ks], [max(rand[k]) for k in ks]
    seeds = len(rand[ks[0]])
    if seeds > 1:  # one seed has no spread: its line alone
        ax.fill_between(ks, lo, hi, color="grey", alpha=0.3, label=f"{rnd} (min-max over {seeds} seeds)")
    ax.plot(ks, [statistics.fmean(rand[k]) for k in ks], color="grey", linestyle=":",
            label=f"{rnd} (mean)" if seeds > 1 else f"{rnd} (1 seed)")
    ax.axhline(s["none"], color="black", linestyle="--", linewidth=1, label=ceiling)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(ks)
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8, loc="best")
    figure_title(fig, title)
    return fig

"""The press leaderboard's figure: one task's score against the KV cache held, a line per press.

``board_figure(presses, full, metric, title)``: ``presses`` maps a press's label to its points
``[(budget, (mean, lo, hi, share))]`` (``experiments.leaderboard.points``); each press is a line
over its budgets, x the share of the full cache's bytes its kept keys hold (%, log scale,
ticks at the budgets), y the mean
score, its bootstrap interval as error bars; the full cache is a horizontal line. A press
ranking heads at random is drawn dashed (a reference, not a contender).
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from .niah import figure_title

Cell = tuple[float, float, float, float]  # mean, lo, hi, bytes share


def board_figure(presses: dict[str, list[tuple[float, Cell]]], full: Cell | None, metric: str,
                 title: str) -> Figure:
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for label, cells in presses.items():
        pts = sorted((100 * c[3], c[0], c[0] - c[1], c[2] - c[0]) for _, c in cells)
        x, y, below, above = zip(*pts)
        ax.errorbar(x, y, yerr=[below, above], marker="o", markersize=4, capsize=2, linewidth=1.2,
                    linestyle="--" if "@random" in label else "-", label=label)
    if full is not None:
        ax.axhline(full[0], color="grey", linestyle=":", label=f"full cache: {full[0]:.1f}")
    ax.set_xscale("log")
    ticks = sorted({100 * b for cells in presses.values() for b, _ in cells})  # the budgets, as shares
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("KV cache held (% of the full cache's bytes, predicted from the keep sets; log scale)")
    ax.set_ylabel(f"{metric} (mean over cells, 95% bootstrap interval)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3, which="both")
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)
    figure_title(fig, title)
    return fig

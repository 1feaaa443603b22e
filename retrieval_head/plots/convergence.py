"""The convergence figure (``heads convergence``): how fast the top-K heads settle as trials
accrue (``analysis.convergence`` computes it; this draws it)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .niah import figure_title


def convergence_figure(c, title: str, lengths: dict | None, enough: float) -> Figure:
    """Overlap vs trials of ``c`` (an ``analysis.convergence.Convergence``: median and the 5-95 %
    band over the random orders; ``enough``, the mean number of trials needed, marked); with
    ``lengths`` a second panel: overlap per context length."""
    fig = Figure(figsize=(11 if lengths else 6.5, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 2 if lengths else 1, 1)
    m = np.arange(1, c.overlap.shape[1] + 1)
    ov = c.overlap.numpy()
    ax.fill_between(m, np.percentile(ov, 5, axis=0), np.percentile(ov, 95, axis=0), alpha=0.3,
                    label=f"5-95 % over {ov.shape[0]} random orders")
    ax.plot(m, np.median(ov, axis=0), label="median")
    ax.axvline(enough, color="red", linestyle="--", label=f"top-{c.k} equal from here on: {enough:.0f} trials (mean)")
    ax.set_xscale("log")  # the top settles early: a log axis shows the first trials
    ax.set_xlabel("trials (counted, in a random order; log scale)")
    ax.set_ylabel(f"top-{c.k} overlap with all {ov.shape[1]} trials' top-{c.k}")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    if lengths:
        ax2 = fig.add_subplot(1, 2, 2)
        xs = list(lengths)
        pt, lo, hi = (np.array([lengths[x][i] for x in xs]) for i in range(3))
        ax2.errorbar(xs, pt, yerr=[pt - lo, hi - pt], marker="o", capsize=3)
        ax2.set_xlabel("context length (tokens): its trials alone")
        ax2.set_ylabel(f"top-{c.k} overlap with all trials' top-{c.k}")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_title("95 % bootstrap interval over that length's trials", fontsize=9)
    figure_title(fig, title)
    return fig

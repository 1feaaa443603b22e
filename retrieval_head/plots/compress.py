"""The compression curve's figure (``retrieval-head compress``, ``mask --keep_full``): score
against the share of the KV cache kept, top-K heads kept full vs random heads, from the points
``experiments.compress.curves`` reads."""

from __future__ import annotations

from matplotlib.figure import Figure

from .niah import figure_title


def compression_title(about: dict[str, str]) -> str:
    """``model, task: metric vs KV cache kept`` and, on a line of its own, the streaming setting."""
    return f"{about['model']}, {about['task']}: {about['metric']} vs KV cache kept\n{about['streaming']}"


def curve_figure(c: dict, title: str | None = None):
    """``experiments.compress.compression_figure``'s drawing of ``curves``' points; the legend sits below the axes,
    off the points, and a point's label turns left near the right edge, so nothing leaves the figure."""
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    if c["top"]:
        x, y, ks = zip(*c["top"])
        ax.plot([100 * v for v in x], y, "o-", color="#C0392B", label="top-K retrieval heads kept full")
        m = c["measured"]
        xs = [p[0] for p in c["top"] + c["random"]]
        lo, span = min(xs), max(xs) - min(xs)
        for xi, yi, k in zip(x, y, ks):  # K, and where the real cache ran, the MiB it held
            text = f"{k}: {m['keep_top', k][0] / 2**20:.2f} MiB" if ("keep_top", k) in m else str(k)
            # in the right part of the points' range or near the top, the label goes left / below: inside the axes
            right, high = xi - lo > 0.6 * span, yi > 90
            ax.annotate(text, (100 * xi, yi), textcoords="offset points", fontsize=8,
                        xytext=(-4 if right else 4, -4 if high else 4), ha="right" if right else "left",
                        va="top" if high else "bottom")
    if c["random"]:
        x, m, lo, hi, _, n = zip(*c["random"])
        seeds = max(n)
        ax.plot([100 * v for v in x], m, "s--", color="#2E86C1",
                label="K random heads kept full " + (f"(mean of {seeds} seeds)" if seeds > 1 else "(1 seed)"))
        if seeds > 1:  # one seed has no spread to show
            ax.fill_between([100 * v for v in x], lo, hi, color="#2E86C1", alpha=0.2,
                            label="random: min-max over seeds")
    if c["reference"] is not None:
        ax.axhline(c["reference"], color="grey", linestyle=":", label=f"full cache: {c['reference']:.1f}")
    ax.set_xlabel("KV cache kept (% of the full cache)" + ("; labels: K, MiB the real cache held" if c["measured"]
                                                           else "; labels: K"))
    ax.set_ylabel(c["about"]["metric"])
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    figure_title(fig, title if title is not None else compression_title(c["about"]))
    return fig

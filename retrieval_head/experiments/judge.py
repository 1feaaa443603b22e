"""The causal judge: whose top-K heads, masked, break retrieval most?

Each head-identification method (``methods``) ranks the heads its own way. The judge
masks each method's top-K heads, for several K, in one masked needle test over the same
cells (needle, lengths, depths) and decoding, with random-K heads as the control (drawn
per seed as ``niah.select_random`` draws them, from the pool of the retrieval file: never
a head scoring >= 0.1 nor one of its top max(K, 10%)), and the unmasked model as the
ceiling. Every condition's mask is decode-phase, so the scheduler prefills each cell once
for all of them. The method that finds the heads whose removal hurts most wins.

    python -m retrieval_head.judge --head_score head_score/M.json head_score/M.query-focus.json \\
        head_score/M.induction.json --mask_top 5 11 19 27 --seeds 0 1 2 --context_lengths 1000 2000

Outputs in ``--output_dir`` (default ``results/judge``):
  <model>.judge.jsonl       one record per (condition, cell): the original's NIAH fields, the
                            mask (``HeadMask.describe()``) and the method
  <model>.judge.md          the table: mean score per method and K, random as mean [min, max]
  <model>.judge.png         score vs K, a line per method, random as a min-max band
  <model>.judge.manifest.json
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..core.mask import HeadMask
from ..errors import UserError
from ..methods.registry import method_of
from .mask import Condition, select_random, select_top
from .settings import JudgeSettings  # noqa: F401 (re-exported: the API)


def labelled(files: tuple[str, ...], model: str) -> dict[str, Path]:
    """Method name -> file (names from ``methods.method_of``; ``<model>.json`` is retrieval's;
    a name used twice is refused).

    >>> labelled(("hs/M.json", "hs/M.echo.json", "other/qr.json"), "M")
    {'retrieval': PosixPath('hs/M.json'), 'echo': PosixPath('hs/M.echo.json'), 'qr': PosixPath('other/qr.json')}
    """
    out: dict[str, Path] = {}
    for f in files:
        m = method_of(Path(f))
        m = "retrieval" if m == model else m
        if m in out or m == "random":
            raise UserError(f"two head-score files name the method {m!r} ({out.get(m)} and {f}); pass one per method")
        out[m] = Path(f)
    return out


def judge_conditions(scores: dict, ks: tuple[int, ...], seeds: tuple[int, ...], mode: str) -> list[Condition]:
    """none; top-K of each method for each K; random-K per seed from the pool's file."""
    pool = scores.get("retrieval", next(iter(scores.values())))
    out = [Condition("none", 0, None, folder="none")]
    for m, s in scores.items():
        out += [Condition("top", k, HeadMask(select_top(s, k, "--mask_top"), mode), folder=f"{m}/top{k}", method=m)
                for k in ks]
    out += [Condition("random", k, HeadMask(select_random(pool, k, seed), mode), seed, f"random/k{k}_seed{seed}",
                      method="random") for k in ks for seed in seeds]
    return out


def summary(conditions: list[Condition], results: dict[str, list[dict]], ks, metric: str = "score") -> dict:
    """``{"none": mean, method: {K: mean}, "random": {K: [mean per seed]}}`` of ROUGE x100
    (``metric`` "score"), or of another field of the records (a task's "string_match")."""
    mean = lambda c: statistics.fmean(r[metric] for r in results[c.folder])  # noqa: E731
    out: dict = {"none": None, "random": {k: [] for k in ks}}
    for c in conditions:
        if c.kind == "none":
            out["none"] = mean(c)
        elif c.method == "random":
            out["random"][c.k].append(mean(c))
        else:
            out.setdefault(c.method, {})[c.k] = mean(c)
    return out


def table(s: dict, ks) -> str:
    """The markdown table of ``summary``."""
    head = "| heads masked | " + " | ".join(f"K = {k}" for k in ks) + " |\n|---|" + "---:|" * len(ks) + "\n"
    rows = ["| none | " + " | ".join(f"{s['none']:.1f}" for _ in ks) + " |"]
    for m, v in s.items():
        if m not in ("none", "random"):
            rows.append(f"| top-K {m} | " + " | ".join(f"{v[k]:.1f}" for k in ks) + " |")
    rand = s["random"]
    rows.append("| random-K (mean [min, max]) | " + " | ".join(
        f"{statistics.fmean(rand[k]):.1f} [{min(rand[k]):.1f}, {max(rand[k]):.1f}]" for k in ks) + " |")
    return head + "\n".join(rows) + "\n"


def figure(s: dict, ks, out_png: Path, title: str, ylabel: str = "ROUGE-1 recall x100") -> Path:
    """``judge_figure`` written to ``out_png``."""
    from ..plots.niah import render

    return render(judge_figure(s, ks, title, ylabel), out_png)


def judge_figure(s: dict, ks, title: str, ylabel: str = "ROUGE-1 recall x100"):
    """Score vs K: a line per method, random as a min-max band around its mean, none dashed;
    ``ylabel``: the task's metric."""
    from matplotlib.figure import Figure

    from ..plots.niah import figure_title

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ks = list(ks)
    for m, v in s.items():
        if m not in ("none", "random"):
            ax.plot(ks, [v[k] for k in ks], marker="o", label=f"top-K {m}")
    rand = s["random"]
    lo, hi = [min(rand[k]) for k in ks], [max(rand[k]) for k in ks]
    seeds = len(rand[ks[0]])
    if seeds > 1:  # one seed has no spread: its line alone
        ax.fill_between(ks, lo, hi, color="grey", alpha=0.3, label=f"random-K (min-max over {seeds} seeds)")
    ax.plot(ks, [statistics.fmean(rand[k]) for k in ks], color="grey", linestyle=":",
            label="random-K (mean)" if seeds > 1 else "random-K (1 seed)")
    ax.axhline(s["none"], color="black", linestyle="--", linewidth=1, label="no heads masked")
    ax.set_xlabel("K (heads masked)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(ks)
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8, loc="best")
    figure_title(fig, title)
    return fig

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

With ``--press duo|headkv --budget F...`` (``press_judge_conditions``) it asks the press user's
question instead: which method picks the best budgets? The press ranks KV heads by each method's
file (read per KV head, ``press.kv_scores``: as the leaderboard's ``headkv@<method>``) and keeps
each budget of the KV cache; the same press on a seeded random ranking per ``--seeds``
(``press.random_ranking``) is the control, the full cache the ceiling. Here the higher score wins.

    python -m retrieval_head.judge --head_score head_score/M.json head_score/M.query-focus.json \\
        --press headkv --budget 0.5 0.25 0.1 --seeds 0 1 2 --context_lengths 1000 2000

Outputs in ``--output_dir`` (default ``results/judge``):
  <model>.judge.jsonl       one record per (condition, cell): the original's NIAH fields, the
                            mask (``HeadMask.describe()``; a press's: ``PressMask.describe()``
                            and the bytes its keep sets hold) and the method
  <model>.judge.md          the table: mean score per method and K (or budget), random as mean [min, max]
  <model>.judge.png         score vs K (or budget), a line per method, random as a min-max band
                            (``plots.judge``)
  <model>.judge.manifest.json
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from ..core.mask import HeadMask
from ..errors import UserError
from ..headfiles.ranking import select_top
from ..methods.registry import method_of
from ..models.shape import ModelShape
from .mask import Condition, select_random
from .press import kv_scores, press_conditions, random_ranking
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


def press_judge_conditions(files: dict[str, Path], press: str, budgets, seeds, shape: ModelShape,
                           args=()) -> list[Condition]:
    """none (the full cache); ``press`` ranked by each method's file (``labelled``) at each
    budget (folder ``<method>/<press>_b<F>``); the same press on a random ranking per seed
    (``random/<press>_b<F>_seed<S>``). Every mistake a ``UserError``, before the model loads."""
    out = [Condition("none", 0, None, folder="none")]
    for m, path in files.items():
        out += [dataclasses.replace(c, folder=f"{m}/{press}_b{c.mask.budget:g}")
                for c in press_conditions("", press, budgets, shape, kv_scores(path, shape), args, ranking=m)]
    for seed in seeds:
        out += [dataclasses.replace(c, folder=f"random/{press}_b{c.mask.budget:g}_seed{seed}")
                for c in press_conditions("", press, budgets, shape, random_ranking(shape, seed), args,
                                          ranking="random", seed=seed)]
    return out


def level(c: Condition):
    """What a judge's condition varies: K (heads masked), or a press's budget."""
    return c.mask.budget if c.kind == "press" else c.k


def summary(conditions: list[Condition], results: dict[str, list[dict]], ks, metric: str = "score") -> dict:
    """``{"none": mean, method: {K: mean}, "random": {K: [mean per seed]}}`` of ROUGE x100
    (``metric`` "score"), or of another field of the records (a task's "string_match"); with
    a press, budgets stand for K (``level``)."""
    mean = lambda c: statistics.fmean(r[metric] for r in results[c.folder])  # noqa: E731
    out: dict = {"none": None, "random": {k: [] for k in ks}}
    for c in conditions:
        if c.kind == "none":
            out["none"] = mean(c)
        elif c.method == "random":
            out["random"][level(c)].append(mean(c))
        else:
            out.setdefault(c.method, {})[level(c)] = mean(c)
    return out


def table(s: dict, ks, press: str | None = None) -> str:
    """The markdown table of ``summary``; ``press``: a press judged it (columns are budgets,
    higher wins, said above the table).

    >>> print(table({"none": 90.0, "random": {0.5: [40.0, 60.0]}, "retrieval": {0.5: 80.0}}, [0.5], "duo"), end="")
    Higher wins: the method whose ranking keeps the most retrieval at a budget picks the best budgets.
    <BLANKLINE>
    | KV heads ranked by | budget = 0.5 |
    |---|---:|
    | full cache | 90.0 |
    | duo by retrieval | 80.0 |
    | duo by random (mean [min, max]) | 50.0 [40.0, 60.0] |
    """
    col, first, ceiling, line = ("K = {}", "heads masked", "none", "top-K {}") if press is None else \
        ("budget = {:g}", "KV heads ranked by", "full cache", f"{press} by {{}}")
    head = f"| {first} | " + " | ".join(col.format(k) for k in ks) + " |\n|---|" + "---:|" * len(ks) + "\n"
    rows = [f"| {ceiling} | " + " | ".join(f"{s['none']:.1f}" for _ in ks) + " |"]
    for m, v in s.items():
        if m not in ("none", "random"):
            rows.append(f"| {line.format(m)} | " + " | ".join(f"{v[k]:.1f}" for k in ks) + " |")
    rand = s["random"]
    rows.append(f"| {'random-K' if press is None else line.format('random')} (mean [min, max]) | " + " | ".join(
        f"{statistics.fmean(rand[k]):.1f} [{min(rand[k]):.1f}, {max(rand[k]):.1f}]" for k in ks) + " |")
    wins = "" if press is None else \
        "Higher wins: the method whose ranking keeps the most retrieval at a budget picks the best budgets.\n\n"
    return wins + head + "\n".join(rows) + "\n"

"""The compression experiment: keep some heads' full KV cache, stream every other head, and
ask the needle test whether retrieval survives (RazorAttention / DuoAttention's question,
answered with the paper's causal test).

``--keep_full K`` (several values in one run):

  K > 0  keep the top-K heads (by the head-score file) at full cache, stream the rest;
  K < 0  keep |K| heads drawn at random from all heads (seeded), stream the rest;
  K = 0  stream every head.

Streamed heads see their first ``--sink`` and last ``--recent`` keys (``streaming``);
``--phase decode`` compresses the prompt's cache once after the prefill (kvpress),
``all`` from the first token (DuoAttention), ``context`` the context once, the question
appended whole (kvpress's pipeline). Every result records the heads kept and
streamed, sink, recent, phase, unit and ``kv_kept``: the fraction of the full KV cache a
compressed cache would hold (``streaming.kv_kept``); a condition run on the real head-wise
cache (``--cache real``, ``engine.realrows``) also the bytes it held, ``kv_bytes`` of
``kv_bytes_full``, which the table and the figure show where the records have them.

    >>> scores = torch.tensor([[0.9, 0.0], [0.5, 0.2]])
    >>> c = keep_conditions("M", [1, 0], scores, "decode", [0], False, 4, 64)
    >>> for x in c:
    ...     print(x.folder, x.kept.nonzero().tolist(), x.mask.heads.nonzero().tolist())
    M_stream_keep_top1_s4_r64 [[0, 0]] [[0, 1], [1, 0], [1, 1]]
    M_stream_all_s4_r64 [] [[0, 0], [0, 1], [1, 0], [1, 1]]
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from ..core.intervene import HeadMask
from ..errors import UserError
from ..headfiles.ranking import select_top
from .mask import Condition


def keep_random(shape: tuple[int, int], k: int, seed: int) -> torch.Tensor:
    """bool ``[layers, units]``: k units drawn uniformly with ``seed`` (the random baseline)."""
    total = shape[0] * shape[1]
    if k > total:
        raise UserError(f"--keep_full -{k} is larger than the model's {total} heads")
    out = torch.zeros(total, dtype=torch.bool)
    out[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:k]] = True
    return out.reshape(shape)


def keep_conditions(model_name: str, ks: list[int], scores: torch.Tensor | None, phase: str, seeds: list[int],
                    seed_folders: bool, sink: int, recent: int, group: int | None = None,
                    grid: tuple[int, int] | None = None) -> list[Condition]:
    """Resolve ``--keep_full`` values into streaming conditions.

    ``scores``: ``[layers, units]`` (None is fine when no K > 0 asks for a ranking; then
    ``grid`` gives the shape); ``group`` (query heads per KV head) switches to KV units:
    each unit kept or streamed is a whole KV head with all its query heads.
    """
    units = tuple(scores.shape) if scores is not None else grid
    suffix = f"_s{sink}_r{recent}" + ("" if phase == "decode" else f"_{phase}") + ("_kv" if group else "")
    unit = "kv" if group else "query"

    def condition(kind: str, k: int, kept: torch.Tensor, seed: int | None, folder: str) -> Condition:
        streamed = ~kept
        heads = streamed.repeat_interleave(group, dim=1) if group else streamed
        return Condition(kind, k, HeadMask(heads, "stream", phase, sink, recent), seed, folder, unit, kept)

    out = []
    for k in ks:
        if k == 0:
            out.append(condition("keep_top", 0, torch.zeros(units, dtype=torch.bool), None,
                                 f"{model_name}_stream_all{suffix}"))
        elif k > 0:
            if scores is None:
                raise UserError("--keep_full K > 0 needs head scores; pass --head_score FILE or run "
                                "retrieval_head_detection.py")
            out.append(condition("keep_top", k, select_top(scores, k, "--keep_full"), None,
                                 f"{model_name}_stream_keep_top{k}{suffix}"))
        else:
            for s in seeds:
                folder = f"{model_name}_stream_keep_random{-k}{suffix}" + (f"_seed{s}" if seed_folders else "")
                out.append(condition("keep_random", -k, keep_random(units, -k, s), s, folder))
    return out


def curves(dirs) -> dict:
    """The compression curve's points from result folders (of one run or of several, e.g.
    one per needle: records of the same condition are pooled): ``{"reference": score or
    None, "top": [(kv_kept, score, k)], "random": [(kv_kept, mean, lo, hi, k, seeds)]}``;
    a score is the mean over the condition's cells of the task's metric (``store.results.metric_of``:
    ROUGE-1 recall for the single needle, string match for a generated task), kv_kept too
    (it depends on the length); random points pool each seed's cells, then take the mean and
    range over seeds. ``about`` says what was run (``describe``), for the figure's title."""
    from ..store.results import metric_of, read_trials

    pooled: dict[tuple, list[dict]] = {}
    for d in dirs:
        for r in read_trials(Path(d)):
            m = r.get("mask") or {}
            if m.get("kind") == "none" or m.get("mode") == "stream":
                pooled.setdefault((m["kind"], m.get("k", 0), m.get("seed")), []).append(r)
    metric = metric_of([r for v in pooled.values() for r in v])
    mean = lambda recs, f: statistics.fmean(f(r) for r in recs)  # noqa: E731
    score = lambda r: r[metric.field]  # noqa: E731
    ref = next((mean(v, score) for (kind, _, _), v in pooled.items() if kind == "none"), None)
    top = sorted((mean(v, lambda r: r["mask"]["kv_kept"]), mean(v, score), k)
                 for (kind, k, _), v in pooled.items() if kind == "keep_top")
    by_k: dict[int, list[tuple[float, float]]] = {}
    for (kind, k, _), v in pooled.items():
        if kind == "keep_random":
            by_k.setdefault(k, []).append((mean(v, lambda r: r["mask"]["kv_kept"]), mean(v, score)))
    randoms = [(statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts), min(p[1] for p in pts),
                max(p[1] for p in pts), k, len(pts)) for k, pts in sorted(by_k.items())]
    zero = [p for p in top if p[2] == 0]  # streaming every head starts both lines
    if zero:
        randoms.insert(0, (zero[0][0], zero[0][1], zero[0][1], zero[0][1], 0, 1))
    return {"reference": ref, "top": top, "random": randoms, "measured": measured(pooled),
            "about": describe([r for v in pooled.values() for r in v], metric.label)}


def describe(records: list[dict], metric: str) -> dict[str, str]:
    """What the curve's records ran, as its title says it: model, task, metric and the
    streaming setting (unit, sink + recent, phase, lengths); ``?`` where no record says.

    >>> describe([{"model": "M", "context_length": 300, "mask": {"mode": "stream", "unit": "kv", "sink": 4,
    ...            "recent": 64, "phase": "decode"}}], "ROUGE-1 recall x100")["streaming"]
    'KV heads kept full, the rest streamed (sink 4 + recent 64, phase decode); 300 tokens'
    """
    from ..store.results import task_of

    joined = lambda values: " + ".join(str(v) for v in dict.fromkeys(values)) or "?"  # noqa: E731
    stream = [r["mask"] for r in records if r["mask"].get("mode") == "stream"]
    units = joined("KV" if m.get("unit") == "kv" else "query" for m in stream)
    lengths = ", ".join(map(str, sorted({r["context_length"] for r in records})))
    field = lambda key: joined(m.get(key, "?") for m in stream)  # noqa: E731
    setting = f"sink {field('sink')} + recent {field('recent')}, phase {field('phase')}"
    return {"model": joined(r.get("model", "?") for r in records), "task": task_of(records), "metric": metric,
            "streaming": f"{units} heads kept full, the rest streamed ({setting}); {lengths} tokens"}


def measured(pooled: dict[tuple, list[dict]]) -> dict[tuple[str, int], tuple[float, float]]:
    """``{(kind, k): (kv_bytes, kv_bytes_full)}``, means over the records of the real cache
    (``--cache real``: the bytes it held once the prompt was in), seeds pooled."""
    by: dict[tuple[str, int], list[dict]] = {}
    for (kind, k, _), recs in pooled.items():
        by.setdefault((kind, k), []).extend(r for r in recs if "kv_bytes" in r.get("mask", {}))
    return {key: (statistics.fmean(r["mask"]["kv_bytes"] for r in recs),
                  statistics.fmean(r["mask"]["kv_bytes_full"] for r in recs)) for key, recs in by.items() if recs}


def held(m: dict, kind: str, k: int) -> str:
    """A measured point as table text: MiB held and its share of the full cache's bytes."""
    if (kind, k) not in m:
        return "—"
    got, full = m[kind, k]
    return f"{got / 2**20:.2f} MiB ({100 * got / full:.1f}%)"


def table(c: dict, heads: int) -> str:
    """The curve as a markdown table: K, % of heads kept, KV kept and score, both lines."""
    rand = {k: (x, m, lo, hi) for x, m, lo, hi, k, _ in c["random"]}
    top = {k: (x, y) for x, y, k in c["top"]}
    lines = ["| K heads kept full | % of heads | top-K: KV kept | top-K: score | random-K: KV kept | "
             "random-K: score (min-max) |", "|---|---|---|---|---|---|"]
    m = c.get("measured") or {}
    if m:  # the real cache ran: the bytes it held, next to the predicted fraction
        lines = [lines[0] + " top-K: KV held (measured) | random-K: KV held (measured) |", lines[1] + "---|---|"]
    for k in sorted(set(top) | set(rand)):
        t = f"{100 * top[k][0]:.1f}% | {top[k][1]:.1f}" if k in top else "— | —"
        r = f"{100 * rand[k][0]:.1f}% | {rand[k][1]:.1f} ({rand[k][2]:.0f}-{rand[k][3]:.0f})" if k in rand else "— | —"
        extra = f" {held(m, 'keep_top', k)} | {held(m, 'keep_random', k)} |" if m else ""
        lines.append(f"| {k} | {100 * k / heads:.1f}% | {t} | {r} |{extra}")
    if c["reference"] is not None:
        full = f" {statistics.fmean(f for _, f in m.values()) / 2**20:.2f} MiB | |" if m else ""
        lines.append(f"| full cache | 100% | 100% | {c['reference']:.1f} | | |{full}")
    return "\n".join(lines)


def compression_figure(dirs, out_png, title: str | None = None) -> Path:
    """NIAH score against the fraction of the KV cache kept: retrieval-ranked heads kept full,
    random heads kept full (mean over seeds, min-max band), the full cache as a reference.
    ``title``: none names what the records ran (``plots.compress.compression_title``); the
    drawing is ``plots.compress.curve_figure``."""
    from ..plots.compress import curve_figure
    from ..plots.niah import render

    c = curves(dirs)
    if not c["top"] and not c["random"]:
        raise UserError("no streaming results in these folders; run the mask script with --keep_full")
    return render(curve_figure(c, title), Path(out_png))

"""How the top-K converges as trials accumulate, and how many trials were enough.

``convergence`` replays a sweep's counted trials in ``seeds`` seeded random orders; after
each trial m it takes the top K of the first m trials' means (``headfiles.ranking``'s rule:
ties layer-major, as ``top_heads``) and records its overlap with the top K of all n trials (the final answer).
``needed`` turns a condition on those prefixes into a number of trials: the smallest m
from which the condition holds for every later prefix too ("enough, and it stays so").

    >>> x = torch.zeros(6, 1, 3, dtype=torch.float64); x[:, 0, 2] = 1.0; x[0, 0, 1] = 2.0
    >>> c = convergence(x, k=1, seeds=2)
    >>> c.final, c.overlap.shape  # 0-2 wins; 0-1 leads (or ties) while trial 0 is among the first two
    ([(0, 2)], torch.Size([2, 6]))
    >>> needed(c.overlap == 1.0).tolist()  # trials needed in each order: trial 0 came late, then 2nd
    [1, 3]

``by_length`` (a trial log): the top K of each context length's trials alone against the
final answer, with a bootstrap interval -- do short contexts already find the heads that
long ones do?
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..headfiles.ranking import top_indices, top_order
from .stability import Trials, bootstrap, load_trials, resample_weights


@dataclass
class Convergence:
    k: int
    final: list[tuple[int, int]]  # the top K of all trials
    overlap: torch.Tensor         # [seeds, n]: |top-K(first m) & final| / K, m = 1..n
    contains: torch.Tensor | None = None  # [seeds, n]: the top K of the first m hold every head of ``want``


def convergence(trials: torch.Tensor, k: int, seeds: int = 20, seed: int = 0,
                want: list[tuple[int, int]] | None = None) -> Convergence:
    """Top-K overlap with the final answer after each trial, in ``seeds`` random orders."""
    x = torch.as_tensor(trials, dtype=torch.float64)
    n, L, H = x.shape
    flat = x.reshape(n, L * H)
    final = top_order(flat.mean(0), k)
    ref = torch.zeros(L * H, dtype=torch.bool)
    ref[final] = True
    wanted = torch.tensor([l * H + h for l, h in want or []], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    counts = torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    overlap, contains = torch.zeros(seeds, n), torch.zeros(seeds, n, dtype=torch.bool)
    for s in range(seeds):
        prefix = flat[torch.randperm(n, generator=g)].cumsum(0) / counts   # [n, heads]: means of the first m
        member = torch.zeros(n, L * H, dtype=torch.bool).scatter_(1, top_indices(prefix, k), True)
        overlap[s] = (member & ref).sum(1).float() / k
        contains[s] = member[:, wanted].all(1)
    return Convergence(k, [(i // H, i % H) for i in final], overlap, contains if want else None)


def needed(ok: torch.Tensor) -> torch.Tensor:
    """Per row of ``ok`` (``[seeds, n]``, column m-1 = after m trials): the smallest m from
    which every later column is True (n + 1 where even the last is False)."""
    tail = ok.flip(1).long().cumprod(1).sum(1)   # how many columns at the end are all True
    return ok.shape[1] - tail + 1


def summary(path: str | Path, k: int = 10, k_stable: int = 5, seeds: int = 20, draws: int = 1000, seed: int = 0,
            confidence: float = 0.95) -> dict:
    """One row of the README's table: the file's counted trials, its stable top ``k``, and how
    many trials (random orders; mean and max over ``seeds``) were enough for the top ``k`` to
    equal the whole file's (``top_equal``), to hold the whole file's stable top ``k``
    (``stable_top_in_top``) and its stable top ``k_stable`` (``stable_in_top``), each from
    that trial on."""
    t = load_trials(path)
    s, small = bootstrap(t.scores, k, draws, seed, confidence), bootstrap(t.scores, k_stable, draws, seed, confidence)
    c = convergence(t.scores, k, seeds, seed, want=small.stable_top)
    eq, inside = needed(c.overlap == 1.0).double(), needed(c.contains).double()
    held = needed(convergence(t.scores, k, seeds, seed, want=s.stable_top).contains).double()
    name = lambda hs: [f"{l}-{h}" for l, h in hs]  # noqa: E731
    return dict(file=Path(path).name, trials=t.scores.shape[0], top=name(s.top), stable_top=name(s.stable_top),
                set_equal=s.set_equal, stable_small=name(small.stable_top),
                top_equal=(eq.mean().item(), eq.max().item()),
                stable_top_in_top=(held.mean().item(), held.max().item()),
                stable_in_top=(inside.mean().item(), inside.max().item()))


def by_length(t: Trials, k: int, draws: int = 1000, seed: int = 0) -> dict[int, tuple[float, float, float]]:
    """``{length: (overlap, lo, hi)}``: each length's top K (its trials alone) against the top K
    of all trials, as a fraction of K, with the 95 % bootstrap interval over its trials."""
    n, L, H = t.scores.shape
    flat = t.scores.reshape(n, L * H)
    ref = torch.zeros(L * H, dtype=torch.bool)
    ref[top_order(flat.mean(0), k)] = True
    g = torch.Generator().manual_seed(seed)
    out = {}
    for length in sorted({key.context_length for key in t.keys}):
        rows = flat[[i for i, key in enumerate(t.keys) if key.context_length == length]]
        point = ref[top_order(rows.mean(0), k)].sum().item() / k
        means = (resample_weights(len(rows), draws, g, None) @ rows) / len(rows)
        boot = ref[top_indices(means, k, g)].sum(1).double() / k
        lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        out[length] = (point, lo, hi)
    return out


def write_figure(c: Convergence, out_png: str | Path, title: str, lengths: dict | None = None) -> Path:
    """``plots.convergence.convergence_figure`` of ``c`` (with the mean number of trials needed,
    ``needed``), written to ``out_png``."""
    from ..plots.convergence import convergence_figure  # matplotlib: only when a figure is asked for
    from ..plots.niah import render

    enough = needed(c.overlap == 1.0).double().mean().item()
    return render(convergence_figure(c, title, lengths, enough), out_png)

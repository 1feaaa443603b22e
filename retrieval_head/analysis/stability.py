"""How sure is a head score: a trial bootstrap, and how the top-K converges as trials accrue.

A head-score file's lists are aligned by trial (entry i of every head is counted trial
i), so the trials are the unit to resample. ``bootstrap`` draws ``draws`` resamples of
the ``n`` trials with replacement (seeded) and reports, per head:

- ``mean``: the head's score over the data (the file's own ranking);
- ``lo``, ``hi``: the percentile bootstrap interval of that mean (95 % by default:
  the 2.5th and 97.5th percentiles of the resampled means) -- the spread the score would
  show if the sweep were rerun on another set of trials like these;
- ``p_top``: the fraction of draws in which the head is among the top K. A draw ranks
  by the one top-K rule (``headfiles.ranking``: means rounded to 12 decimals), but its
  ties are broken at RANDOM (seeded, a fresh order per draw), not layer-major: two heads
  tied in every trial get ``p_top`` ~ 0.5 each, not 1 and 0.

and for the set: ``top`` (the top K of the means by that rule, ties layer-major: the
heads ``heads top`` and the masking's top-K name),
``stable_top`` (the heads with ``p_top >= confidence``, in ``top``'s order),
``set_equal`` (the fraction of draws whose top-K SET equals ``top``) and ``jaccard`` (the
mean Jaccard index of a draw's top-K set with ``top``) and ``kept`` (the mean share of
``top`` a draw's top K keeps: the mean of ``p_top`` over ``top``). The adaptive sweep
stops on one of two rules: ``stable`` (every head of ``top`` is in ``stable_top``) or
``kept >= confidence`` (a resample keeps, on average, at least that share of the top K:
near-tied heads at the K-th place need not be resolved).

``strata`` (a label per trial: its needle, length or depth) resamples within each
stratum, keeping the grid's balance.

    >>> x = torch.zeros(8, 1, 3, dtype=torch.float64); x[:, 0, 0] = 1.0   # head 0-0 scores 1, always
    >>> s = bootstrap(x, k=1, draws=200)
    >>> s.lo[0, 0].item(), s.hi[0, 0].item(), s.p_top[0, 0].item(), s.stable_top, s.stable
    (1.0, 1.0, 1.0, [(0, 0)], True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..headfiles.original import read_head_file, validate_head_scores
from ..headfiles.ranking import top_indices, top_order
from ..inputs.grid import TrialKey
from ..vocabulary import MAX_DRAWS  # noqa: F401,E402 (the cap, re-exported)


@dataclass
class Trials:
    """Per-trial head scores ``[n, layers, heads]`` (float64), and each trial's key when known."""

    scores: torch.Tensor
    keys: list[TrialKey] | None = None

    def strata(self, by: str | None) -> list | None:
        """Each trial's needle, length or depth (``by``); None for ``by`` None."""
        if by is None:
            return None
        if self.keys is None:
            raise UserError(f"--by {by} needs a trial log (<model>.trials.jsonl): a head-score file does not say "
                            "which trial had which needle, length or depth")
        field = {"needle": "needle_id", "length": "context_length", "depth": "depth_percent"}[by]
        return [getattr(k, field) for k in self.keys]


def load_trials(path: str | Path) -> Trials:
    """Counted trials of a head-score file (``{"layer-head": [scores]}``) or of a trial log
    (``<model>.trials.jsonl``: its passed trials, in canonical order, as the file lists them)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise UserError(f"trial log {path} does not exist; pass a <model>.trials.jsonl or a head_score/*.json")
        records = sorted((r for r in read_trial_log(path) if r.get("passed")), key=TrialKey.of)
        if not records:
            raise UserError(f"trial log {path} has no counted (passed) trial; nothing to resample")
        return Trials(_score_grid(records, path), [TrialKey.of(r) for r in records])
    keys = validate_head_scores(read_head_file(path), path)
    layers, heads = 1 + max(l for l, _ in keys), 1 + max(h for _, h in keys)
    grid = torch.tensor([keys[(l, h)] for l in range(layers) for h in range(heads)], dtype=torch.float64)
    if grid.shape[-1] == 0 or grid.dim() != 2:
        raise UserError(f"head_score file {path} lists no counted trial; nothing to resample")
    return Trials(grid.T.reshape(-1, layers, heads))


LOG_HINT = "pass a <model>.trials.jsonl as retrieval_head_detection.py writes it"


def read_trial_log(path: Path) -> list[dict]:
    """A trial log's records, each checked to be a trial (its key, ``passed``); a torn last
    line (a run killed mid-write) is dropped, as ``TrialLog.read`` does, any other line that
    is not a record refused in one line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"trial log {path} is not UTF-8 text; {LOG_HINT}") from None
    records = []
    for i, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise UserError(f"trial log {path}: line {i} is not JSON; {LOG_HINT}") from None
        if not isinstance(r, dict) or any(k not in r for k in ("needle_id", "context_length", "depth_percent",
                                                               "passed")):
            raise UserError(f"trial log {path}: line {i} is not a trial record (needle_id, context_length, "
                            f"depth_percent, passed, head_scores); {LOG_HINT}")
        records.append(r)
    return records


def _score_grid(records: list[dict], path: Path) -> torch.Tensor:
    """``[n, layers, heads]`` float64 of the records' ``head_scores``, refused in one line
    unless every one is a finite [layers][heads] grid of the same shape."""
    first = TrialKey.of(records[0])
    try:
        x = torch.tensor([r["head_scores"] for r in records], dtype=torch.float64)
    except (KeyError, TypeError, ValueError):
        x = None
    if x is None or x.dim() != 3 or not torch.isfinite(x).all() or 0 in x.shape:
        raise UserError(f"trial log {path}: the passed trials' head_scores are not finite [layers][heads] grids "
                        f"of one shape (the first, {first}, has {_shape_of(records[0].get('head_scores'))}); "
                        f"{LOG_HINT}")
    return x


def _shape_of(v) -> str:
    """How a ``head_scores`` value looks, for the message.

    >>> _shape_of([[0.5, 1], [0, 0]]), _shape_of(None), _shape_of([[1], [1, 2]])
    ('a 2 x 2 grid', 'none', 'ragged rows')
    """
    if not isinstance(v, list) or not all(isinstance(row, list) for row in v):
        return "none" if v is None else f"a {type(v).__name__}"
    return f"a {len(v)} x {len(v[0])} grid" if v and len({len(row) for row in v}) == 1 else "ragged rows"


@dataclass
class Stability:
    k: int
    draws: int
    seed: int
    confidence: float
    n_trials: int
    mean: torch.Tensor   # [layers, heads]
    lo: torch.Tensor
    hi: torch.Tensor
    p_top: torch.Tensor
    top: list[tuple[int, int]]
    stable_top: list[tuple[int, int]]
    set_equal: float
    jaccard: float

    @property
    def stable(self) -> bool:
        return len(self.stable_top) == len(self.top)

    @property
    def kept(self) -> float:
        return sum(self.p_top[l, h].item() for l, h in self.top) / len(self.top)

    def to_json(self) -> dict:
        """``{"heads": {"l-h": {mean, lo, hi, p_top}}, "stable_top", ...}``, every head, layer-major."""
        L, H = self.mean.shape
        r = lambda x: round(float(x), 6)  # noqa: E731
        heads = {f"{l}-{h}": dict(mean=r(self.mean[l, h]), lo=r(self.lo[l, h]), hi=r(self.hi[l, h]),
                                  p_top=r(self.p_top[l, h])) for l in range(L) for h in range(H)}
        name = lambda hs: [f"{l}-{h}" for l, h in hs]  # noqa: E731
        return dict(k=self.k, draws=self.draws, seed=self.seed, confidence=self.confidence,
                    trials=self.n_trials, top=name(self.top), stable_top=name(self.stable_top),
                    stable=self.stable, kept=r(self.kept), set_equal=r(self.set_equal), jaccard=r(self.jaccard),
                    heads=heads)


def resample_weights(n: int, draws: int, g: torch.Generator, strata: list | None) -> torch.Tensor:
    """``[draws, n]``: how often each trial is drawn in each resample (whole numbers)."""
    groups = [list(range(n))] if strata is None else \
        [[i for i, s in enumerate(strata) if s == v] for v in sorted(set(strata))]
    counts = torch.zeros(draws, n, dtype=torch.float64)
    for members in groups:
        idx = torch.tensor(members)[torch.randint(len(members), (draws, len(members)), generator=g)]
        counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts


def mean_interval(values, draws: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of ``values`` and its percentile bootstrap interval, the cells
    resampled with replacement as ``bootstrap`` resamples trials (seeded, ``resample_weights``).

    >>> mean_interval([100.0, 100.0, 0.0, 0.0], draws=2000)[0], mean_interval([7.0, 7.0])
    (50.0, (7.0, 7.0, 7.0))
    """
    x = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if x.numel() == 0:
        raise UserError("no values to resample")
    means = (resample_weights(x.numel(), draws, torch.Generator().manual_seed(seed), None) @ x) / x.numel()
    alpha = (1 - confidence) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return float(x.mean()), lo, hi


def bootstrap(trials: torch.Tensor, k: int, draws: int = 1000, seed: int = 0, confidence: float = 0.95,
              strata: list | None = None) -> Stability:
    """The trial bootstrap of ``trials`` (``[n, layers, heads]``); see the module docstring."""
    x = torch.as_tensor(trials, dtype=torch.float64)
    if x.dim() != 3 or x.shape[0] == 0:
        raise UserError(f"bootstrap needs [trials, layers, heads] scores with at least one trial, got {tuple(x.shape)}")
    n, L, H = x.shape
    if not 1 <= k <= L * H:
        raise UserError(f"--top must be in 1..{L * H} (the heads), got {k}")
    if draws < 1 or not 0 < confidence <= 1:
        raise UserError(f"--draws must be at least 1 and --confidence in (0, 1], got {draws} and {confidence}")
    g = torch.Generator().manual_seed(seed)
    flat = x.reshape(n, L * H)
    means = (resample_weights(n, draws, g, strata) @ flat) / n     # [draws, heads]: one matmul (counts: exact sums)
    mean = flat.mean(0)
    alpha = (1 - confidence) / 2
    q = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64), dim=0)
    tops = top_indices(means, k, g)                                    # [draws, k]
    member = torch.zeros(draws, L * H, dtype=torch.bool).scatter_(1, tops, True)
    p_top = member.double().mean(0)
    top = top_order(mean, k)
    ref = torch.zeros(L * H, dtype=torch.bool)
    ref[top] = True
    shared = (member & ref).sum(1).double()
    grid = lambda v: v.reshape(L, H)  # noqa: E731
    pairs = lambda idx: [(i // H, i % H) for i in idx]  # noqa: E731
    return Stability(k=k, draws=draws, seed=seed, confidence=confidence, n_trials=n, mean=grid(mean),
                     lo=grid(q[0]), hi=grid(q[1]), p_top=grid(p_top), top=pairs(top),
                     stable_top=pairs([i for i in top if p_top[i] >= confidence]),
                     set_equal=float((shared == k).double().mean()), jaccard=float((shared / (2 * k - shared)).mean()))


def format_stability(s: Stability, rows: int | None = None) -> str:
    """The top heads with their intervals and P(top-K), then the set's stability."""
    lines = [f"{s.n_trials} trials, {s.draws} bootstrap draws (seed {s.seed}); interval: {s.confidence:.0%} percentile",
             f"{'rank':>4}  {'head':>7}  {'mean':>6}  {'lo':>6}  {'hi':>6}  {f'P(top-{s.k})':>10}  stable"]
    order = top_order(s.mean, rows or s.k)
    H = s.mean.shape[1]
    stable = set(s.stable_top)
    for r, i in enumerate(order, 1):
        l, h = i // H, i % H
        lines.append(f"{r:>4}  {f'{l}-{h}':>7}  {s.mean[l, h]:6.3f}  {s.lo[l, h]:6.3f}  {s.hi[l, h]:6.3f}  "
                     f"{s.p_top[l, h]:10.3f}  {'yes' if (l, h) in stable else ''}")
    lines.append(f"stable top-{s.k} (P >= {s.confidence:g}): {len(s.stable_top)} of {s.k}: "
                 + (" ".join(f"{l}-{h}" for l, h in s.stable_top) or "(none)"))
    lines.append(f"top-{s.k} set unchanged in {s.set_equal:.1%} of draws; mean Jaccard with it {s.jaccard:.3f}; "
                 f"a draw keeps {s.kept:.1%} of it on average")
    return "\n".join(lines)


def dump(s: Stability, **extra) -> str:
    """``to_json`` (with ``extra`` keys first) as the CLI's ``--json`` prints it: same seed, same bytes."""
    return json.dumps(extra | s.to_json(), indent=1) + "\n"

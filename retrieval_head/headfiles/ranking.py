"""The one top-K rule: which heads are "the top K" of a score grid, wherever K heads are named.

Masking's top-K and its random pool, the keep-sets and rankings ``heads export`` writes,
``heads top|compare|heatmap``, the bootstrap's top K and P(top-K), convergence and the
adaptive sweep's stop all rank heads here, so they name the same heads for the same scores.

The rule: heads by descending score, each score first **rounded to 12 decimals**
(``DECIMALS``); heads whose rounded scores are equal are tied, and ties go in
**layer-major order** (layer 0's heads first, then by head). The rounding is there because
one head's mean comes out of different arithmetic in different places (a Python sum of the
file's list, ``torch.mean``, a bootstrap matmul): a mean that equals another's in exact
arithmetic may differ from it in the last bits, and such a tie must not be broken by the
order of an addition. (Two scores 1e-15 apart that straddle a rounding boundary, e.g. just
below and just above ``0.0000000000005``, still rank apart: the rule is deterministic, not
perfect.) The bootstrap's resamples use the same rounding but break ties at random (a
seeded ``torch.Generator``; ``top_indices(..., g)``), so two heads tied in every trial get
P(top-K) ~ 0.5 each, not 1 and 0.

Worked example: head 0-1 scored ``0.1 + 0.2`` (0.30000000000000004 in floating point), head
1-0 scored 0.3, head 0-0 scored ``0.5 + 1e-15``, head 1-1 scored 0.5::

    >>> s = torch.tensor([[0.5 + 1e-15, 0.1 + 0.2], [0.3, 0.5]], dtype=torch.float64)
    >>> [(l, h) for l, h, _ in top_heads(s)]                 # 0-0 ~ 1-1, then 0-1 ~ 1-0: layer-major
    [(0, 0), (1, 1), (0, 1), (1, 0)]
    >>> top_order(s, 3), top_indices(s.reshape(1, -1), 3).tolist()
    ([0, 3, 1], [[0, 3, 1]])
    >>> print(format_top_table(s, 2))
    rank     head   score
       1      0-0   0.500
       2      1-1   0.500
"""

from __future__ import annotations

import logging

import torch

from ..errors import UserError
from .order import DECIMALS, format_rows

log = logging.getLogger(__name__)


def tie_key(scores: torch.Tensor) -> torch.Tensor:
    """The scores the ranking compares: float64, rounded to ``DECIMALS`` places."""
    return torch.round(scores.double(), decimals=DECIMALS)


def top_indices(scores: torch.Tensor, k: int, g: torch.Generator | None = None) -> torch.Tensor:
    """``[rows, k]`` flat indices of each row's top ``k`` of ``scores`` (``[rows, heads]``,
    heads flattened layer-major): ties layer-major, or at random when ``g`` is given (a fresh
    order per row, drawn from ``g``)."""
    m = tie_key(scores)                                                  # [rows, heads]
    if g is None:
        return torch.sort(-m, dim=1, stable=True).indices[:, :k]
    perm = torch.argsort(torch.rand(m.shape, generator=g, dtype=torch.float64), dim=1)  # a random order per row
    order = torch.sort(-m.gather(1, perm), dim=1, stable=True).indices[:, :k]  # stable: ties keep the random order
    return perm.gather(1, order)


def top_order(scores: torch.Tensor, k: int | None = None) -> list[int]:
    """Flat (layer-major) indices of the top ``k`` of ``scores`` (any shape; all heads for
    ``k`` None), best first."""
    n = scores.numel()
    return top_indices(scores.reshape(1, n), n if k is None else k)[0].tolist()


def top_heads(scores: torch.Tensor, k: int | None = None) -> list[tuple[int, int, float]]:
    """``[(layer, head, score)]`` of the top ``k`` heads of ``scores`` (``[layers, heads]``),
    best first (all heads for ``k`` None); the score as given, not rounded.

    >>> top_heads(torch.tensor([[0.1, 0.5], [0.5, 0.0]]), 2)
    [(0, 1, 0.5), (1, 0, 0.5)]
    """
    flat = scores.flatten().tolist()
    heads = scores.shape[1]
    return [(i // heads, i % heads, flat[i]) for i in top_order(scores, k)]


def select_top(scores: torch.Tensor, k: int, option: str = "--mask_top") -> torch.Tensor:
    """bool ``[layers, heads]``: the k best heads (ties broken in layer-major order, the rule
    above; ``order.top_rows`` picks the same heads without torch); ``option`` names the flag in
    the error a too-large k gets. Masking's top-K, streaming's kept heads and the judge's.

    >>> select_top(torch.tensor([[0.9, 0.0], [0.5, 0.2]]), 2).nonzero().tolist()
    [[0, 0], [1, 0]]
    """
    total = scores.numel()
    if k > total:
        raise UserError(f"{option} {k} is larger than the model's {total} heads")
    nonzero = int((scores > 0).sum())
    if k > nonzero:
        log.warning("selecting the top %d heads, but only %d heads have a nonzero score (the rest tie at 0, "
                    "taken in layer-major order)", k, nonzero)
    out = torch.zeros(scores.shape, dtype=torch.bool)
    for l, h, _ in top_heads(scores, k):
        out[l, h] = True
    return out


def format_top_table(scores: torch.Tensor, k: int = 20) -> str:
    """A plain-text ranked table of the top ``k`` heads."""
    return format_rows(top_heads(scores, k))

"""What every press shares: the budget check, splitting a row's keys over its KV heads, and
choosing keys by score (per head, or flattened over the layer's heads) or by place (sink +
recent), always over real keys only (a key before ``seen.start[b]`` is a pad: never kept,
never counted, so a left-padded row chooses as it would alone).

Worked example: 7 keys over 2 KV heads weighted 3 : 1, each head at most 4 (its real keys);
then each head's top 2 of a score row (ties: the earlier key), and sink 1 + recent 1::

    >>> apportion(torch.tensor([7]), torch.tensor([[3.0, 1.0]]), torch.tensor([4]), 4).tolist()
    [[4, 3]]
    >>> s = torch.tensor([[[0.1, 0.9, 0.5, 0.5]]])
    >>> top_per_head(s, torch.tensor([[2]])).int().tolist()
    [[[0, 1, 1, 0]]]
    >>> place = torch.arange(4).expand(1, 1, 4)
    >>> sink_recent(place, torch.tensor([0]), torch.tensor([4]), torch.tensor([[2]]), sink=1).int().tolist()
    [[[1, 0, 0, 1]]]
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..models.shape import ModelShape

NEG_INF = float("-inf")


def check_budget(budget: float) -> float:
    """``budget`` as a float, refused (one line) outside (0, 1]."""
    if not 0.0 < float(budget) <= 1.0:
        raise UserError(f"a press's budget is the part of the KV cache kept, in (0, 1]; got {budget}")
    return float(budget)


def uniform_shares(shape: ModelShape, budget: float) -> list[float]:
    """Every layer keeps ``budget`` of its keys."""
    return [check_budget(budget)] * shape.num_layers


def positions(seen) -> torch.Tensor:
    """long ``[1, 1, n]``: key positions, to compare with per-row bounds ``[b, 1, 1]``."""
    return torch.arange(seen.keys.shape[2], device=seen.keys.device)[None, None, :]


def real_keys(seen) -> torch.Tensor:
    """bool ``[b, 1, n]``: the row's real keys (from ``seen.start[b]`` on)."""
    return positions(seen) >= seen.start.to(seen.keys.device)[:, None, None]


def even_counts(totals: torch.Tensor, kv: int) -> torch.Tensor:
    """long ``[b, kv]``: ``totals [b]`` split evenly over ``kv`` heads, the remainder one each
    to the first heads (what ``apportion`` gives for equal weights)."""
    heads = torch.arange(kv, device=totals.device)
    return (totals[:, None] // kv) + (heads[None, :] < (totals % kv)[:, None]).long()


def apportion(totals: torch.Tensor, weights: torch.Tensor, real: torch.Tensor, n: int) -> torch.Tensor:
    """long ``[b, kv]``: ``totals [b]`` keys split over the heads in proportion to ``weights``
    (``[b or 1, kv]``, >= 0), no head above its row's ``real [b]`` keys, summing to ``totals``
    exactly (``totals <= kv * real``). Sainte-Lague's divisor rule: head h's j-th key has
    priority ``weights[h] / (j + 1/2)``; the row's ``totals`` best keys are kept (ties: the
    earlier head), so a heavier head never gets fewer keys and a capped head's excess goes to
    the others in proportion to their weights."""
    b, kv = totals.shape[0], weights.shape[-1]
    seat = torch.arange(n, device=totals.device, dtype=torch.float64)
    prio = weights.double().to(totals.device)[:, :, None] / (seat + 0.5)          # [b or 1, kv, n]
    prio = prio.expand(b, kv, n).masked_fill(seat[None, None, :] >= real.to(totals.device)[:, None, None], NEG_INF)
    kept = ranks(prio.reshape(b, kv * n)) < totals[:, None]
    return kept.reshape(b, kv, n).sum(-1)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """long, the shape of ``scores``: each entry's place (0 = best) along the last dim by
    descending score; ties: the earlier entry first (a stable sort)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    place = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, place)


def top_per_head(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """bool ``[b, kv, n]``: each head's ``counts [b, kv]`` best keys of ``scores [b, kv, n]``
    (pads scored -inf, counts at most the real keys)."""
    return ranks(scores) < counts[:, :, None]


def top_flat(scores: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """bool ``[b, kv, n]``: each row's ``totals [b]`` best keys of ``scores [b, kv, n]`` over
    all its heads together (ties: the earlier head, then the earlier key)."""
    b, kv, n = scores.shape
    return (ranks(scores.reshape(b, kv * n)) < totals[:, None]).reshape(b, kv, n)


def sink_recent(place: torch.Tensor, start: torch.Tensor, real: torch.Tensor, counts: torch.Tensor,
                sink: int) -> torch.Tensor:
    """bool ``[b, kv, n]``: per head, its row's first ``min(sink, count)`` real keys and the
    last ``count - min(sink, count)``, from key positions ``place [1, 1, n]``, each row's
    ``start`` and ``real`` keys ``[b]`` and ``counts [b, kv]``."""
    rel = place - start[:, None, None]                                          # [b, 1, n]
    head = torch.clamp(counts, max=sink)[:, :, None]
    tail = (counts[:, :, None] - head)
    return (rel >= 0) & ((rel < head) | (rel >= real[:, None, None] - tail))

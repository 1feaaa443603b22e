"""What a press sees of one layer at the compression point (``Seen``), and the contract a
press keeps (``Press``): the one interface between the presses (``retrieval_head.presses``:
which keys each KV head keeps) and what applies their choice (the masked simulation and the
head-wise cache, here in ``core``).

A press is asked once per layer, when the cache holds the context's ``n`` keys: ``keep``
answers, per batch row and KV head, which of those keys stay. ``share`` is the part of the
layer's keys (over its KV heads, real tokens only) the layer may hold; a press's
``layer_shares`` spreads a whole-cache ``budget`` over the layers (their mean is the budget).
Each row then keeps ``round(share * kv_heads * real_length)`` keys in all over its KV heads,
sink and recent keys included: the budget counts every key held.

    >>> seen = Seen(0, torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 8, 4), torch.zeros(1, 4, 0, 4), 0.5,
    ...             torch.tensor([2]))
    >>> seen.real_lengths().tolist(), seen.totals(0.25).tolist()       # 6 real keys x 2 KV heads x 0.25
    ([6], [3])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..models.shape import ModelShape


@dataclass(frozen=True)
class Seen:
    """One layer at the compression point (every tensor on the model's device).

    keys, values: ``[b, kv, n, d]``, after RoPE: the n keys the layer's cache holds.
    queries:      ``[b, h, w, d]``, after RoPE: the queries of the last ``w`` positions before
                  the compression point (``w = min(press.window, n)``; 0 for a press that reads none).
    scale:        the attention's softmax scale.
    start:        long ``[b]``: each row's first real position (left padding); keys before it
                  are pads: never kept, never counted.
    """

    layer: int
    keys: torch.Tensor
    values: torch.Tensor
    queries: torch.Tensor
    scale: float
    start: torch.Tensor

    def real_lengths(self) -> torch.Tensor:
        """long ``[b]``: each row's real keys."""
        return self.keys.shape[2] - self.start

    def totals(self, share: float) -> torch.Tensor:
        """long ``[b]``: the keys each row keeps in all over the layer's KV heads at ``share``."""
        real = self.real_lengths().double() * self.keys.shape[1]
        return torch.minimum(torch.round(real * share), real).long()


class Press(Protocol):
    """Which keys each KV head keeps (``retrieval_head.presses``: one file per press)."""

    name: str
    window: int  # the last queries the press reads (SnapKV's observation window); 0: none

    def layer_shares(self, shape: ModelShape, budget: float) -> list[float]:
        """Per layer, the share of its keys it keeps (mean = ``budget``)."""
        ...

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        """bool ``[b, kv, n]``: the keys each KV head of each row keeps, none before
        ``seen.start``; each row ``seen.totals(share)`` of them (a press that keeps whole
        heads or fixed spans, duo's, as many as fit in that: at most)."""
        ...

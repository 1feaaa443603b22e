"""Knorm (Devoto et al. 2024, "A simple and effective L2 norm-based strategy for KV cache
compression"): keep the keys of smallest L2 norm.

Follows kvpress/presses/knorm_press.py (kvpress 0.5.5, ``KnormPress``: score = -||k||), reading
no query (``window`` 0).

Where we differ, and why: the budget counts keys per row over the layer's KV heads
(``Seen.totals``), split evenly over the heads with the remainder one key each to the first
heads (kvpress keeps ``int(n * (1 - ratio))`` per head); pads are never kept (kvpress has no
padding); the norm is taken in float32; ties go to the earlier key.

Worked example: one KV head, key norms 3, 1, 2, 0.5; half the keys kept::

    >>> import torch
    >>> from retrieval_head.core.seen import Seen
    >>> keys = torch.tensor([3.0, 1.0, 2.0, 0.5]).reshape(1, 1, 4, 1)
    >>> seen = Seen(0, keys, keys, torch.zeros(1, 1, 0, 1), 1.0, torch.tensor([0]))
    >>> Knorm().keep(seen, 0.5).int().tolist()
    [[[0, 1, 0, 1]]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.attend import NEG_INF
from ..core.seen import Seen
from ..models.shape import ModelShape
from .choose import even_counts, real_keys, top_per_head, uniform_shares


@dataclass
class Knorm:
    """Knorm's press (module docstring)."""

    window: ClassVar[int] = 0
    name: ClassVar[str] = "knorm"

    def scores(self, seen: Seen) -> torch.Tensor:
        """float32 ``[b, kv, n]``: minus each key's L2 norm; pads -inf."""
        norms = torch.linalg.vector_norm(seen.keys, dim=-1, dtype=torch.float32)  # no float32 copy of the keys
        return norms.neg_().masked_fill_(~real_keys(seen), NEG_INF)

    def layer_shares(self, shape: ModelShape, budget: float) -> list[float]:
        return uniform_shares(shape, budget)

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        counts = even_counts(seen.totals(share).to(seen.keys.device), seen.keys.shape[1])
        return top_per_head(self.scores(seen), counts)

"""DuoAttention (Xiao et al. 2025): whole KV heads either keep every key (the head file's best
heads) or stream (only their ``sink`` first and ``recent`` last keys).

Follows kvpress/presses/duo_attention_press.py (kvpress 0.5.5, ``DuoAttentionPress``): the
streamed heads are the lowest-scored of a head ranking, and keep sink + recent keys. Its sink
and recent come with DuoAttention's released pattern (its ``config.json``; 128 and 256 for
kvpress's on-the-fly scores); ours are this package's ``--sink`` 4 and ``--recent`` 64, as the
head-wise cache streams its heads, since any head file may rank the heads here.

Where we differ, and why:

- the ranking is any head file's ``scores [layers, kv_heads]`` (retrieval, a Duo pattern...),
  best first by the one top-K rule (``ranking.top_order``: ties layer-major);
- the budget is bytes, not a head count (kvpress's ``head_compression_ratio``): a full head
  holds ``n`` keys, a streamed one ``min(sink + recent, n)``, and as many of the best heads
  are full as fit the budget at the context length ``length`` (``layer_shares`` needs it: a
  layer's share depends on ``n``). ``layer_shares`` reports each layer's part of that set, so
  the shares are not uniform and their mean is at most the budget;
- ``keep`` fills a row's total for the layer (``Seen.totals``) with whole heads, the layer's
  best first, as many as fit beside the streamed heads' spans (a row of ``length`` real keys
  gets exactly the planned set); where not even the spans fit, every head streams a shorter
  span (its first ``min(sink, c)`` and last keys, ``c`` the total split evenly);
- kvpress masks the streamed keys in attention; here ``keep`` says which keys stay.

Worked example: 2 layers of 2 KV heads, 100 keys, sink 2 + recent 8; at a budget of 0.8 (320
keys) three heads fit whole (3 x 100 + 10 <= 320, 4 x 100 would not), and head 1-0, the lowest
scored, streams::

    >>> import torch
    >>> from retrieval_head.core.seen import Seen
    >>> from retrieval_head.models.shape import ModelShape
    >>> shape = ModelShape(2, 2, 2, 1, None, (None,) * 2)  # layers, heads, KV heads, head_dim
    >>> press = Duo(torch.tensor([[0.9, 0.5], [0.1, 0.7]]), sink=2, recent=8, length=100)
    >>> press.full_heads(shape, 0.8).tolist()
    [[True, True], [False, True]]
    >>> press.layer_shares(shape, 0.8)
    [1.0, 0.55]
    >>> keys = torch.zeros(1, 2, 100, 1)
    >>> kept = press.keep(Seen(1, keys, keys, torch.zeros(1, 2, 0, 1), 1.0, torch.tensor([0])), 0.55)
    >>> kept.sum(-1).tolist(), kept[0, 0].nonzero().flatten().tolist()
    ([[10, 100]], [0, 1, 92, 93, 94, 95, 96, 97, 98, 99])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.seen import Seen
from ..errors import UserError
from ..headfiles.ranking import top_order
from ..models.shape import ModelShape
from .choose import check_budget, even_counts, positions, sink_recent


@dataclass
class Duo:
    """DuoAttention's press (module docstring): ``scores [layers, kv_heads]`` rank the heads."""

    scores: torch.Tensor
    sink: int = 4
    recent: int = 64
    length: int | None = None  # the context length the full set is planned for (layer_shares)
    window: ClassVar[int] = 0
    name: ClassVar[str] = "duo"

    def __post_init__(self):
        if self.sink < 0 or self.recent < 1:
            raise UserError(f"{self.name}: sink must be >= 0 and recent >= 1 (got {self.sink}, {self.recent})")
        if self.scores.ndim != 2:
            raise UserError(f"{self.name}: scores must be [layers, kv_heads], got shape {tuple(self.scores.shape)}")

    def _check(self, shape: ModelShape) -> None:
        if tuple(self.scores.shape) != (shape.num_layers, shape.num_kv_heads):
            raise UserError(f"{self.name}: head scores of shape {tuple(self.scores.shape)} for a model of "
                            f"{shape.num_layers} layers x {shape.num_kv_heads} KV heads")
        if self.length is None or self.length < 1:
            raise UserError(f"{self.name} plans whole heads for one context length: give length=N (keys), "
                            f"got {self.length}")

    def full_count(self, shape: ModelShape, budget: float) -> int:
        """How many KV heads (of the whole cache) stay full at ``budget`` and ``length``."""
        self._check(shape)
        heads, n = shape.num_layers * shape.num_kv_heads, self.length
        span = min(self.sink + self.recent, n)
        if budget * n < span:
            return 0
        if n == span:  # a streamed head holds every key anyway
            return heads
        return min(heads, math.floor((budget * heads * n - heads * span) / (n - span) + 1e-9))

    def full_heads(self, shape: ModelShape, budget: float) -> torch.Tensor:
        """bool ``[layers, kv_heads]``: the heads kept whole, the best first by the one top-K rule."""
        out = torch.zeros(self.scores.numel(), dtype=torch.bool)
        out[top_order(self.scores, self.full_count(shape, check_budget(budget)))] = True
        return out.reshape(self.scores.shape)

    def layer_shares(self, shape: ModelShape, budget: float) -> list[float]:
        full = self.full_heads(shape, budget)
        n, kv = self.length, shape.num_kv_heads
        span = min(self.sink + self.recent, n)
        if budget * n < span:  # not even the streamed spans fit: each layer its even part
            return [float(budget)] * shape.num_layers
        return [(f * n + (kv - f) * span) / (kv * n) for f in full.sum(1).tolist()]

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        device, kv = seen.keys.device, seen.keys.shape[1]
        real, totals = seen.real_lengths().to(device), seen.totals(share).to(device)
        span = torch.clamp(real, max=self.sink + self.recent)
        fits = totals >= kv * span
        whole = torch.div(totals - kv * span, (real - span).clamp(min=1), rounding_mode="floor")
        whole = torch.where(real > span, whole, torch.full_like(whole, kv)).clamp(0, kv)
        rank = torch.tensor(top_order(self.scores[seen.layer]), device=device).argsort()  # head -> place in layer
        counts = torch.where(rank[None, :] < whole[:, None], real[:, None], span[:, None])
        counts = torch.where(fits[:, None], counts, even_counts(totals, kv))
        return sink_recent(positions(seen), seen.start.to(device), real, counts, self.sink)

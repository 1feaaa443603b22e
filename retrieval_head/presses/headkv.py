"""HeadKV (Fu et al., ICLR 2025, "Not All Heads Matter"): a budget per KV head from a head
file's scores, SnapKV inside each head.

kvpress 0.5.5 has no HeadKV press; this follows the paper's code (github FYYFU/HeadKV,
headkv/snapkv_utils.py, ``ReasonSnapKVCluster``): with ``B`` a head's even budget, every head
keeps a base ``B - B / beta`` and the rest, ``B / beta`` from each of the ``N`` heads, is one
shared pool spread in proportion to the heads' normalised scores ``p = s^temp / sum s^temp``:
head i keeps ``B (1 - 1/beta) + p_i (B / beta) N``. Any head file's ``scores [layers,
kv_heads]`` serve (retrieval, query-focus, needle-mass, a foreign Duo/Razor file; negative
scores count as 0). ``beta``: HeadKV's own scripts sweep 1.005 to 10 and name no default; ours
is 1.2, in that range. ``temp`` 1 as in its scripts. Inside each head, ``SnapKV`` (window 64,
kernel 5, average pool: kvpress's defaults; HeadKV's class defaults are 32, 7, max pool).

Where we differ, and why:

- shares are fractions of the keys, so head i's share is ``budget x w_i`` with ``w_i = (1 -
  1/beta) + p_i N / beta`` (mean 1); a head whose share would pass 1 keeps every key and its
  excess goes to the other heads in proportion to their ``w`` (HeadKV leaves it unspent), so
  the shares' mean is the budget exactly (``head_shares``; a layer's share is its heads' mean);
- HeadKV keeps the window on top of a head's budget; ours counts it in (``Seen.totals``);
- ``keep`` splits a row's total for the layer over its heads in proportion to ``w`` (Sainte-Lague,
  no head above its real keys: ``choose.apportion``), so the counts sum to the total exactly and a
  higher-scored head never keeps fewer keys;
- ``beta`` must be above 1 (at 1 a zero-scored head would keep nothing, not even its window).

Worked example: 1 layer of 3 KV heads scored 3 : 1 : 0, beta 2, 20 keys, half kept (30 keys):
w = 0.5 + p x 3 / 2 = (1.625, 0.875, 0.5); shares 0.8125, 0.4375, 0.25 of 20 keys::

    >>> import torch
    >>> from retrieval_head.core.seen import Seen
    >>> from retrieval_head.models.shape import ModelShape
    >>> shape = ModelShape(num_layers=1, num_heads=3, num_kv_heads=3, head_dim=2, max_positions=None, windows=(None,))
    >>> press = HeadKV(torch.tensor([[3.0, 1.0, 0.0]]), beta=2, window=4)
    >>> press.head_shares(shape, 0.5).tolist()
    [[0.8125, 0.4375, 0.25]]
    >>> keys = torch.randn(1, 3, 20, 2, generator=torch.Generator().manual_seed(0))
    >>> seen = Seen(0, keys, keys, torch.zeros(1, 3, 4, 2), 1.0, torch.tensor([0]))
    >>> press.keep(seen, 0.5).sum(-1).tolist()
    [[16, 9, 5]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.seen import Seen
from ..errors import UserError
from ..models.shape import ModelShape
from .choose import apportion, check_budget, top_per_head
from .snapkv import snap_scores


@dataclass
class HeadKV:
    """HeadKV's press (module docstring): ``scores [layers, kv_heads]`` set the head budgets."""

    scores: torch.Tensor
    beta: float = 1.2
    temp: float = 1.0
    window: int = 64
    kernel: int = 5
    name: ClassVar[str] = "headkv"

    def __post_init__(self):
        if self.scores.ndim != 2:
            raise UserError(f"{self.name}: scores must be [layers, kv_heads], got shape {tuple(self.scores.shape)}")
        if self.beta <= 1 or self.temp <= 0:
            raise UserError(f"{self.name}: beta must be > 1 and temp > 0 (got {self.beta}, {self.temp})")
        if self.window < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise UserError(f"{self.name}: window must be >= 1 and kernel odd (got {self.window}, {self.kernel})")

    def weights(self) -> torch.Tensor:
        """float64 ``[layers, kv_heads]``: each head's ``w`` (mean 1): its share over the budget."""
        p = self.scores.double().clamp(min=0) ** self.temp
        p = p / p.sum() if p.sum() > 0 else torch.full_like(p, 1.0 / p.numel())
        return (1 - 1 / self.beta) + p * p.numel() / self.beta

    def head_shares(self, shape: ModelShape, budget: float) -> torch.Tensor:
        """float64 ``[layers, kv_heads]``: ``min(1, c w)``, ``c`` set so their mean is ``budget``."""
        budget = check_budget(budget)
        if tuple(self.scores.shape) != (shape.num_layers, shape.num_kv_heads):
            raise UserError(f"{self.name}: head scores of shape {tuple(self.scores.shape)} for a model of "
                            f"{shape.num_layers} layers x {shape.num_kv_heads} KV heads")
        w = self.weights()
        full = torch.zeros_like(w, dtype=torch.bool)
        while True:  # each pass caps at least one more head at 1, so at most N passes
            c = (budget * w.numel() - full.sum()) / w[~full].sum()
            over = ~full & (c * w > 1)
            if not over.any():
                return torch.where(full, torch.ones_like(w), c * w)
            full |= over

    def layer_shares(self, shape: ModelShape, budget: float) -> list[float]:
        return self.head_shares(shape, budget).mean(1).tolist()

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        device = seen.keys.device
        totals, real = seen.totals(share).to(device), seen.real_lengths().to(device)
        counts = apportion(totals, self.weights()[seen.layer][None, :], real, seen.keys.shape[2])
        return top_per_head(snap_scores(seen, self.kernel), counts)

"""AdaKV (Feng et al. 2024): a layer's budget spent over its heads together, by one top-k of
a scorer press's scores flattened over the heads, so a head whose attention is spread keeps
more keys than one whose attention is concentrated.

Follows kvpress/presses/adakv_press.py (kvpress 0.5.5, ``AdaKVPress``): it wraps a scorer press
(``press``, default ``SnapKV``) and keeps a safeguard: each head's ``alpha`` (``alpha_safeguard``,
default 0.20) x its even share of keys, its best, are kept before the flattened top-k.

Where we differ, and why: per row, the layer keeps ``Seen.totals(share)`` keys over its heads
and a head's safeguard is ``floor(alpha x total / kv)`` (kvpress: ``int(alpha x int(n (1 -
ratio)))`` per head); ties go to the earlier head, then the earlier key; pads are never kept
(kvpress has no padding); kvpress masks the dropped keys in attention (its patched attention),
here ``keep`` says which keys stay. Any press with a ``scores(seen)`` method can be wrapped
(``snapkv``, ``knorm``, ``pyramidkv``: its layer schedule is then not used, as in kvpress).

Worked example (Knorm's scores: small norms first): two KV heads of 5 keys, head 1's keys all
larger than head 0's; 4 keys kept (0.4): at alpha 0.2 head 1's safeguard is floor(0.2 x 4 / 2)
= 0 keys and head 0 takes all 4; at alpha 0.5 it is 1 key, head 1's smallest::

    >>> import torch
    >>> from retrieval_head.core.seen import Seen
    >>> from retrieval_head.presses.knorm import Knorm
    >>> keys = torch.tensor([[1.0, 2, 3, 4, 5], [9, 8, 7, 6, 10]]).reshape(1, 2, 5, 1)
    >>> seen = Seen(0, keys, keys, torch.zeros(1, 2, 0, 1), 1.0, torch.tensor([0]))
    >>> AdaKV(Knorm()).keep(seen, 0.4).int().tolist()
    [[[1, 1, 1, 1, 0], [0, 0, 0, 0, 0]]]
    >>> AdaKV(Knorm(), alpha=0.5).keep(seen, 0.4).int().tolist()
    [[[1, 1, 1, 0, 0], [0, 0, 0, 1, 0]]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from ..core.seen import Seen
from ..errors import UserError
from ..models.shape import ModelShape
from .choose import top_flat, top_per_head, uniform_shares
from .snapkv import SnapKV


class Scorer(Protocol):
    """A press that scores each key (higher = kept first; pads -inf)."""

    window: int

    def scores(self, seen: Seen) -> torch.Tensor: ...


@dataclass
class AdaKV:
    """AdaKV's press (module docstring): ``press``'s scores, top-k over the layer's heads."""

    press: Scorer = field(default_factory=SnapKV)
    alpha: float = 0.20
    name: ClassVar[str] = "adakv"

    def __post_init__(self):
        if not hasattr(self.press, "scores"):
            raise UserError(f"{self.name} wraps a press that scores keys (snapkv, knorm, pyramidkv), "
                            f"not {getattr(self.press, 'name', self.press)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"{self.name}: alpha must be in [0, 1], got {self.alpha}")

    @property
    def window(self) -> int:
        return self.press.window

    def layer_shares(self, shape: ModelShape, budget: float) -> list[float]:
        return uniform_shares(shape, budget)

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        kv = seen.keys.shape[1]
        totals = seen.totals(share).to(seen.keys.device)
        scores = self.press.scores(seen)
        safe = torch.floor(self.alpha * totals.double() / kv + 1e-9).long()        # [b]
        promoted = top_per_head(scores, safe[:, None].expand(-1, kv))
        return top_flat(scores.masked_fill(promoted, float("inf")), totals)

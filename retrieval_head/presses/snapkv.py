"""SnapKV (Li et al. 2024): keep the keys the last ``window`` queries attend to.

Follows kvpress/presses/snapkv_press.py (kvpress 0.5.5, ``SnapKVPress``): a key's score is the
window queries' softmax attention to it, averaged over the window's queries and over the query
heads of its KV group, then smoothed along the keys by an average pool of width ``kernel``
(zero-padded at both ends of the keys before the window); the window's own keys always rank
above every other; each KV head keeps its best keys. Defaults are kvpress's (window 64, kernel 5).

Where we differ, and why:

- the budget counts every key kept, the window's included, per row over the layer's KV heads
  (``Seen.totals``), split evenly over the heads, the remainder one key each to the first
  heads (kvpress keeps ``int(n * (1 - ratio))`` per head);
- a head whose share is smaller than the window keeps the window's most recent keys (kvpress
  scores the window's keys alike, so which it keeps is up to ``topk``);
- left padding: pad keys are out of every softmax and never kept, pad queries (a row shorter than
  the window) are left out of the mean, so a padded row chooses as it would alone (kvpress has
  no padding);
- the attention is float32 from ``attend.logits`` (kvpress casts it back to the model's dtype).

Worked example: one KV head, 8 keys, the window = the last 2 (keys 6 and 7). The window's
queries attend most to key 1, then key 3; pooled over 3 keys, key 2, between them, scores best
(attention's neighbours are kept with it). The window is always kept: 3 keys (share 0.375) are
the window and key 2; 4 keys add key 1::

    >>> import torch
    >>> from retrieval_head.core.seen import Seen
    >>> keys = torch.zeros(1, 1, 8, 2); keys[0, 0, 1, 0] = 4.0; keys[0, 0, 3, 0] = 3.0
    >>> queries = torch.tensor([1.0, 0.0]).expand(1, 1, 2, 2)
    >>> seen = Seen(0, keys, keys, queries, 1.0, torch.tensor([0]))
    >>> press = SnapKV(window=2, kernel=3)
    >>> [round(x, 3) for x in press.scores(seen)[0, 0].tolist()]
    [0.231, 0.235, 0.315, 0.092, 0.092, 0.008, 1.875, 2.0]
    >>> press.keep(seen, 0.375).int().tolist(), press.keep(seen, 0.5).int().tolist()
    ([[[0, 0, 1, 0, 0, 0, 1, 1]]], [[[0, 1, 1, 0, 0, 0, 1, 1]]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.attend import NEG_INF, blocked_by_position, logits, probabilities
from ..core.seen import Seen
from ..errors import UserError
from ..models.shape import ModelShape
from .choose import even_counts, positions, real_keys, top_per_head, uniform_shares


def window_attention(seen: Seen) -> torch.Tensor:
    """float32 ``[b, kv, n]``: the softmax attention of the window's queries (the last ``w``
    positions, causal among themselves) to each key, averaged over the row's real window
    queries and over the query heads of each KV group; 0 for pads."""
    b, kv, n, _ = seen.keys.shape
    heads, w = seen.queries.shape[1], seen.queries.shape[2]
    real = real_keys(seen)                                                       # [b, 1, n]
    qpos = torch.arange(n - w, n, device=seen.keys.device)
    s = logits(seen.queries, seen.keys, seen.scale)                              # [b, h, w, n]
    s.masked_fill_(blocked_by_position(qpos, torch.arange(n, device=qpos.device), None), NEG_INF)
    s.masked_fill_(~real[:, :, None, :], NEG_INF)
    p = probabilities(s).nan_to_num_(0.0)                  # a pad query sees no key: its row is 0
    valid = (qpos[None, :] >= seen.start.to(qpos.device)[:, None]).sum(1).clamp(min=1)  # [b]
    mean = p.sum(2) / valid[:, None, None]                                       # [b, h, n]
    return mean.reshape(b, kv, heads // kv, n).mean(2)


def snap_scores(seen: Seen, kernel: int) -> torch.Tensor:
    """float32 ``[b, kv, n]``: ``window_attention`` of the keys before the window, pooled
    (average, width ``kernel``, zero-padded); the window's keys score above 1 (attention is
    at most 1), the later the higher; pads -inf."""
    b, kv, n, _ = seen.keys.shape
    before = n - seen.queries.shape[2]
    att = window_attention(seen)[..., :before]
    if before:
        att = F.avg_pool1d(att, kernel_size=kernel, stride=1, padding=kernel // 2)
    place = positions(seen)
    recent = (1.0 + (place[..., before:] + 1).float() / n).expand(b, kv, n - before)
    return torch.cat([att, recent], dim=-1).masked_fill_(~real_keys(seen), NEG_INF)


@dataclass
class SnapKV:
    """SnapKV's press (module docstring): ``window`` queries read, pooled with ``kernel``."""

    window: int = 64
    kernel: int = 5
    name: ClassVar[str] = "snapkv"

    def __post_init__(self):
        if self.window < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise UserError(f"{self.name}: window must be >= 1 and kernel odd and >= 1 "
                            f"(got window {self.window}, kernel {self.kernel})")

    def scores(self, seen: Seen) -> torch.Tensor:
        """float32 ``[b, kv, n]``: higher = kept first (``snap_scores``)."""
        return snap_scores(seen, self.kernel)

    def layer_shares(self, shape: ModelShape, budget: float) -> list[float]:
        return uniform_shares(shape, budget)

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        counts = even_counts(seen.totals(share).to(seen.keys.device), seen.keys.shape[1])
        return top_per_head(self.scores(seen), counts)

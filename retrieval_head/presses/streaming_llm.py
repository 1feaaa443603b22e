"""StreamingLLM (Xiao et al. 2024): every KV head keeps its first ``sink`` keys (attention
sinks) and the most recent rest of its budget.

Follows kvpress/presses/streaming_llm_press.py (kvpress 0.5.5, ``StreamingLLMPress``; ``sink``
is its ``n_sink``, default 4), reading no query (``window`` 0).

Where we differ, and why: the budget counts keys per row over the layer's KV heads
(``Seen.totals``), split evenly over the heads with the remainder one key each to the first
heads (kvpress keeps ``int(n * (1 - ratio))`` per head); a head whose budget is below ``sink``
keeps its first keys only (kvpress scores sink and recent keys alike, so ``topk`` decides);
a row's sink keys are its first real keys, after any left padding (kvpress has no padding).
As in kvpress, the kept keys keep their positions (no re-rotation, ``KeyRerotationPress``).

Worked example: one KV head, 10 keys, 2 of them left pads; half the 8 real keys kept, with 2
sinks: the row's first 2 real keys and its last 2::

    >>> import torch
    >>> from retrieval_head.core.seen import Seen
    >>> keys = torch.zeros(1, 1, 10, 1)
    >>> seen = Seen(0, keys, keys, torch.zeros(1, 1, 0, 1), 1.0, torch.tensor([2]))
    >>> StreamingLLM(sink=2).keep(seen, 0.5).int().tolist()
    [[[0, 0, 1, 1, 0, 0, 0, 0, 1, 1]]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.seen import Seen
from ..errors import UserError
from ..models.shape import ModelShape
from .choose import even_counts, positions, sink_recent, uniform_shares


@dataclass
class StreamingLLM:
    """StreamingLLM's press (module docstring)."""

    sink: int = 4
    window: ClassVar[int] = 0
    name: ClassVar[str] = "streaming_llm"

    def __post_init__(self):
        if self.sink < 0:
            raise UserError(f"{self.name}: sink must be >= 0, got {self.sink}")

    def layer_shares(self, shape: ModelShape, budget: float) -> list[float]:
        return uniform_shares(shape, budget)

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        device = seen.keys.device
        counts = even_counts(seen.totals(share).to(device), seen.keys.shape[1])
        return sink_recent(positions(seen), seen.start.to(device), seen.real_lengths().to(device), counts, self.sink)

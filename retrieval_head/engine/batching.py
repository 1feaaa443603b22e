"""Which prefilled prompts decode together, as one batch (a lever beneath ``schedule``).

A decode step on a CPU (and on a GPU at these sizes) is memory-bound: it reads every
weight once, whatever the number of rows, so 6 rows cost about 2.3x one row on SmolLM2
at 2K tokens, not 6x. Prompts are built to exact token lengths, so all prompts of one
context length have the same length: their caches stack without padding and each row
decodes as it would alone (``decode.decode_rows``).

``RowBatcher`` collects prefilled prompts (a ``kvcache.snapshot`` of each one's cache) per
prompt length, each to be decoded ``copies`` times (a row per masking condition). ``add``
returns the groups to decode now: a length's group when it is full, or, when the rows
held would exceed the budget of cached tokens, the largest group first; ``flush`` returns
the rest. The default budget (``auto_budget``) is 16384 tokens, less where a quarter of
the free memory holds fewer.

    >>> b = RowBatcher(budget_tokens=3000)
    >>> b.rows_for(1000), b.rows_for(2000), b.rows_for(4000)
    (3, 1, 1)
    >>> ready = [b.add(Row(key, 1000, None)) for key in "abcd"]
    >>> [[r.item for r in g] for groups in ready for g in groups], [[r.item for r in g] for g in b.flush()]
    ([['a', 'b', 'c']], [['d']])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import psutil
import torch

from ..models.shape import ModelShape

AUTO_MAX_TOKENS = 16384  # beyond this, more rows add little on a CPU and only cost memory
AUTO_MEMORY_FRACTION = 0.25  # of the memory free when the sweep starts

T = TypeVar("T")


@dataclass
class Row(Generic[T]):
    """One prefilled prompt waiting for its decode: ``snapshot`` is ``kvcache.snapshot`` of
    its cache, ``prefill_s`` what its prefill took."""

    item: T
    length: int
    snapshot: torch.Tensor | None
    prefill_s: float = 0.0


class RowBatcher(Generic[T]):
    def __init__(self, budget_tokens: int, copies: int = 1):
        self.budget, self.copies = budget_tokens, copies
        self.pending: dict[int, list[Row[T]]] = {}

    def rows_for(self, length: int) -> int:
        """How many prompts of this length are decoded together (each ``copies`` rows)."""
        return max(1, self.budget // max(length * self.copies, 1))

    def held_tokens(self) -> int:
        return self.copies * sum(length * len(rows) for length, rows in self.pending.items())

    def add(self, row: Row[T]) -> list[list[Row[T]]]:
        """Hold ``row``; the groups that must be decoded now."""
        group = self.pending.setdefault(row.length, [])
        group.append(row)
        ready = []
        if len(group) >= self.rows_for(row.length):
            ready.append(self.pending.pop(row.length))
        while self.held_tokens() > self.budget:
            ready.append(self.pending.pop(max(self.pending, key=lambda L: L * len(self.pending[L]))))
        return ready

    def flush(self) -> list[list[Row[T]]]:
        """Every group still waiting (the end of a sweep), shortest prompts first."""
        return [self.pending.pop(length) for length in sorted(self.pending)]


def free_memory(device: torch.device) -> int:
    """Bytes free on the device (CUDA) or available in RAM (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def auto_budget(model, shape: ModelShape) -> int:
    """The default ``batch_tokens``: 16384 tokens, or what a quarter of the free memory holds."""
    p = next(model.parameters())
    free = free_memory(p.device)
    return min(AUTO_MAX_TOKENS, int(free * AUTO_MEMORY_FRACTION) // shape.kv_bytes_per_token(p.element_size()))

"""Decoding trials of one prompt length together, as one batch.

A decode step on a CPU (and on a GPU at these sizes) is memory-bound: it reads every
weight once, whatever the number of rows, so 6 rows cost about 2.3x one row on SmolLM2
at 2K tokens, not 6x. Prompts are built to exact token lengths, so all trials of one
context length have the same prompt length: their caches stack without padding and each
row decodes as it would alone (``decode.decode_rows``).

``RowBatcher`` collects prefilled trials (a copy of each one's cache) per prompt length
and, when a group is full or the rows held would exceed the budget of cached tokens (then
the largest group goes first), stacks its caches (``kvcache.stack_rows``, each one
``copies`` times: a row per masking condition) and hands rows and cache to ``decode_group``. A length whose single
prompt already fills the budget gets one row: no copy, decoded on its own cache. The
default budget (``auto_budget``) is 16384 tokens, less where a quarter of the free memory
holds fewer, so long prompts (where memory matters) are decoded one at a time.

    >>> done = []
    >>> def decode_group(rows, cache):
    ...     done.append(([r.key for r in rows], cache.layers[0].keys.shape[0]))
    >>> b = RowBatcher(budget_tokens=3000, decode_group=decode_group, reserve=4)
    >>> b.rows_for(1000), b.rows_for(2000), b.rows_for(4000)
    (3, 1, 1)
    >>> one_layer = lambda: torch.zeros(1, 2, 1, 1000, 8)  # kvcache.snapshot: [layers, k/v, kv_heads, T, d]
    >>> for key in "abcd":
    ...     b.add(Row(key, 1000, one_layer()))
    >>> b.flush(); done
    [(['a', 'b', 'c'], 3), (['d'], 1)]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil
import torch

from .kvcache import stack_rows

log = logging.getLogger(__name__)

AUTO_MAX_TOKENS = 16384  # beyond this, more rows add little on a CPU and only cost memory
AUTO_MEMORY_FRACTION = 0.25  # of the memory free when the sweep starts


@dataclass
class Row:
    """One prefilled trial waiting for its decode: ``snapshot`` is ``kvcache.snapshot`` of
    its cache; ``info`` whatever the caller needs to finish the trial."""

    key: Any
    length: int
    snapshot: torch.Tensor | None
    info: dict = field(default_factory=dict)


class RowBatcher:
    def __init__(self, budget_tokens: int, decode_group: Callable[[list[Row], Any], None], reserve: int,
                 copies: int = 1):
        self.budget, self.decode_group = budget_tokens, decode_group
        self.reserve, self.copies = reserve, copies
        self.pending: dict[int, list[Row]] = {}

    def rows_for(self, length: int) -> int:
        """How many prompts of this length are decoded together (each ``copies`` rows)."""
        return max(1, self.budget // max(length * self.copies, 1))

    def held_tokens(self) -> int:
        return self.copies * sum(length * len(rows) for length, rows in self.pending.items())

    def add(self, row: Row) -> None:
        group = self.pending.setdefault(row.length, [])
        group.append(row)
        if len(group) >= self.rows_for(row.length):
            self._run(row.length)
        while self.held_tokens() > self.budget:
            self._run(max(self.pending, key=lambda L: L * len(self.pending[L])))

    def flush(self) -> None:
        """Decode every group still waiting (the end of a sweep)."""
        for length in sorted(self.pending):
            self._run(length)

    def _run(self, length: int) -> None:
        rows = self.pending.pop(length)
        snaps = [r.snapshot for r in rows for _ in range(self.copies)]  # row j * copies + i
        for r in rows:
            r.snapshot = None  # stack_rows frees each snapshot once copied
        self.decode_group(rows, stack_rows(snaps, self.reserve))


def kv_bytes_per_token(model) -> int:
    """Bytes one token adds to the KV cache (keys and values of every layer), from the config."""
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv * head_dim * next(model.parameters()).element_size()


def free_memory(device: torch.device) -> int:
    """Bytes free on the device (CUDA) or available in RAM (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def auto_budget(model) -> int:
    """The default ``batch_tokens``: 16384 tokens, or what a quarter of the free memory holds."""
    free = free_memory(next(model.parameters()).device)
    return min(AUTO_MAX_TOKENS, int(free * AUTO_MEMORY_FRACTION) // kv_bytes_per_token(model))

"""Prefix reuse across the prompts of a sweep (a lever beneath ``schedule``).

Every prompt of one haystack starts with the same template and haystack tokens up to its
needle's insertion point. Run in ascending insertion order, each trial finds the previous
prompt's prefix already in the cache: it crops the cache back to the longest common prefix
(dropping the previous trial's needle, suffix and answer) and prefills only what follows,
so a sweep prefills roughly half the tokens of independent trials.

The cache (a ``GrowingCache``) is built without the model config, so sliding-window layers
keep every key and can be cropped back (their window is applied by the mask, as for full layers). When the
shared part is short a fresh prefill is cheaper (on CPU a prefill on top of a cache costs
more per token), so below ``min_shared`` the cache starts over.

    >>> common_prefix([1, 2, 3, 4], [1, 2, 5])
    2
"""

from __future__ import annotations

import torch

from ..core.decode import input_device, prefill
from ..core.kvcache import GrowingCache


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = (torch.tensor(a[:n]) != torch.tensor(b[:n])).nonzero()
    return int(diff[0]) if len(diff) else n


class SharedPrefix:
    """Serves each prompt a cache holding ``prompt_ids[:-1]``, reusing the last one's prefix."""

    def __init__(self, model, min_shared: int = 256, min_fraction: float = 0.25, chunk: int | None = None,
                 reserve: int = 64):
        self.model, self.min_shared, self.min_fraction, self.chunk = model, min_shared, min_fraction, chunk
        self.reserve = reserve
        self.ids: list[int] = []
        self.cache = GrowingCache(reserve=reserve)
        self.reused_tokens = 0  # for reports: how many prefill tokens were saved

    def cache_for(self, prompt_ids: list[int], fresh_from: int | None = None):
        """A cache holding ``prompt_ids[:-1]`` (decoding extends it; the next call crops).
        ``fresh_from``: prefill at least the tokens from this position on (an attention tap
        reads their rows), however much of the last prompt they share."""
        target = prompt_ids[:-1]
        common = common_prefix(self.ids, target)
        if fresh_from is not None:
            common = min(common, fresh_from)
        if common < max(self.min_shared, self.min_fraction * len(target)):
            self.cache, common = GrowingCache(reserve=self.reserve), 0
        else:
            extra = self.cache.get_seq_length() - common
            if extra > 0:
                self.cache.crop(-extra)
        rest = torch.tensor([target[common:]], device=input_device(self.model))
        if rest.shape[1]:
            prefill(self.model, rest, self.chunk, cache=self.cache)
        self.ids = target
        self.reused_tokens += common
        return self.cache


class FreshPrefix:
    """The same interface without reuse: a new prefill per prompt (independent trials).

    Its caches keep every key too (built without the config), so every cache the scheduler
    sees has one policy: it can be cropped back, snapshotted and stacked into a batch."""

    def __init__(self, model, chunk: int | None = None, reserve: int = 64):
        self.model, self.chunk, self.reserve = model, chunk, reserve
        self.reused_tokens = 0

    def cache_for(self, prompt_ids: list[int], fresh_from: int | None = None):
        ids = torch.tensor([prompt_ids[:-1]], device=input_device(self.model))
        return prefill(self.model, ids, self.chunk, cache=GrowingCache(reserve=self.reserve))

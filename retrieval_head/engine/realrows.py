"""Conditions decoded on a real compressed KV cache, in the scheduler: the cache as a lever.

A masked condition (``HeadMask``, ``PressMask``) decodes on the scheduler's full cache, the
hidden keys kept and masked. A ``RealCache`` condition instead gives the scheduler a factory
for the cache that really drops them, and the attention hooks decoding on it needs; the
scheduler does the rest as for any condition (prefix reuse, batching, timing, progress):

- phase ``decode`` (a kvpress press): the condition joins the first decode pass. Each prompt
  is prefilled plain there (its shared prefix reused), and each batch of prompts of one length
  is stacked once into a plain cache that every real condition compresses into its own
  (``compress``: ``HeadwiseCache.absorb``, what the condition's own prefill would hold, the
  plain cache left as it was); each condition's rows then decode as one batch on its cache;
- phase ``all`` (DuoAttention): the prefill itself runs under the rule, so the condition gets
  a pass of its own. Nothing can be reused there: a compressed cache cannot be cropped back to
  the prefix two prompts share (its dropped keys are gone), so each batch of prompts of one
  length is prefilled together into a fresh cache (``prefilled``) and decoded on it.

Either way a row is exactly the masked simulation's (``mask``, the reference semantics,
``core.reference.masked_trial``) token for token (tests/test_realrows.py), and records the
bytes its cache held once the prompt was in it (``RealBatch.held``), next to a plain cache's.

A press (``RealPress``, phase decode) runs the same way on a ``pressed.PressedCache``, one row
per cache: it absorbs the plain prefill up to the press's window, re-runs the window, and
compresses in the first decode step, equal token for token to the scheduler's masked press
rows (``engine.pressed``), its bytes read once compressed.

    >>> keep = torch.tensor([[True, False]])  # 1 layer, 2 KV heads of 1 query head each
    >>> real = RealCache(keep, HeadMask(~keep, "stream", "all", sink=2, recent=8))
    >>> real.phase, real.mask.kind()
    ('all', ('stream', 'all', 2, 8))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..core.cachebase import CompressedCache
from ..core.decode import decode_rows, input_device, prefill
from ..core.headwise import HeadwiseCache
from ..core.headwise_attend import HeadwiseAttention
from ..core.hook import Hook
from ..core.intervene import intervene
from ..core.keep import cache_bytes
from ..core.kvcache import GrowingCache
from ..core.mask import HeadMask, PressMask
from ..core.pressed import PressedCache
from ..models.shape import ModelShape
from .pressed import kept_keys

REAL_PHASES = ("decode", "all")  # the scheduler's points: the prompt's end (decode) or every step (all)


@dataclass(frozen=True, eq=False)
class RealCache:
    """A condition decoded on a head-wise cache (``headwise.HeadwiseCache``): ``keep`` (bool
    ``[layers, kv_heads]`` or, of query heads, ``[layers, heads]``) the heads kept whole, the
    others streamed under ``mask``'s rule (``HeadMask(~kept query heads, "stream", phase, sink,
    recent)``: the masked simulation it equals)."""

    keep: torch.Tensor
    mask: HeadMask
    batched = True  # rows of one length share a cache (each holds as much)
    settled = 0  # the decode steps after which the cache holds the prompt compressed (its bytes read then)

    def __post_init__(self):
        if self.keep.dtype != torch.bool or self.mask.mode != "stream" or self.mask.phase not in REAL_PHASES:
            raise ValueError(f"a real-cache condition is a bool keep set and a stream mask of phase "
                             f"{' or '.join(REAL_PHASES)}, got {self.keep.dtype}, mode {self.mask.mode!r}, "
                             f"phase {self.mask.phase!r}")

    @property
    def phase(self) -> str:
        return self.mask.phase

    def hooks(self) -> list[Hook]:
        """What decoding (and a phase-all prefill) on the cache needs: its keys are read only
        by the head-wise attention."""
        return [HeadwiseAttention()]

    def empty(self, shape: ModelShape, reserve: int) -> CompressedCache:
        m = self.mask
        return HeadwiseCache(shape, self.keep, m.sink, m.recent, m.phase, reserve=reserve)

    def compress(self, model, shape: ModelShape, plain, prompts: list[list[int]], chunk: int | None,
                 reserve: int) -> CompressedCache:
        """Phase decode: this condition's cache of the rows ``plain`` holds (a plain cache, every
        key of every layer: the scheduler's prefill of ``prompts`` but their last tokens),
        compressed at their length as its own prefill would be; ``plain`` is left as it was."""
        return self.empty(shape, reserve).absorb(plain)

    def kept_keys(self, cache: CompressedCache, at: int) -> int | None:
        return None

    def prefilled(self, model, shape: ModelShape, prompts: list[list[int]], chunk: int | None,
                  reserve: int) -> CompressedCache:
        """Phase all: a fresh cache holding ``prompts`` (of one length) but their last tokens,
        prefilled together under the rule."""
        ids = torch.tensor([p[:-1] for p in prompts], device=input_device(model))
        cache = self.empty(shape, reserve)
        with intervene(model, hooks=self.hooks()):
            prefill(model, ids, chunk, cache=cache)
        return cache


@dataclass(frozen=True, eq=False)
class RealPress:
    """A press condition (``mask``, phase decode) decoded on a pressed cache
    (``pressed.PressedCache``: each KV head holds only the keys the press keeps). Each row gets
    a cache of its own (``batched`` False): a pressed cache pads a batch's rows to its longest,
    so a row's bytes are its own only alone."""

    mask: PressMask
    phase = "decode"
    batched = False
    settled = 1  # compressed in the first decode step: the prompt's last token is the press's last query

    def __post_init__(self):
        if self.mask.phase != "decode":
            raise ValueError(f"a press on the real cache compresses the prompt (phase decode), got {self.mask.phase!r}")

    def hooks(self) -> list[Hook]:
        return [HeadwiseAttention()]

    def compress(self, model, shape: ModelShape, plain, prompts: list[list[int]], chunk: int | None,
                 reserve: int) -> CompressedCache:
        """The pressed cache of the rows ``plain`` holds (the scheduler's plain prefill of
        ``prompts`` but their last tokens): every key before the press's window of queries
        taken from it (``PressedCache.absorb``), the window's tokens run on it but the last,
        which the first decode step runs: the press then sees the prompt's keys and its window
        of queries, and compresses at the prompt's length, as a plain generate inside its
        scope does (``core.mask.PressMask``; the scheduler's masked press rows)."""
        length = len(prompts[0])
        w = min(max(1, self.mask.press.window), length)
        cache = PressedCache(shape, self.mask.planned(length), self.mask.budget, "decode", reserve=reserve)
        cache.compress_at(length)
        cache.absorb(plain, length - w)
        if w > 1:
            ids = torch.tensor([p[length - w : -1] for p in prompts], device=input_device(model))
            with intervene(model, hooks=self.hooks()):
                prefill(model, ids, chunk, cache=cache)
        return cache

    def kept_keys(self, cache: CompressedCache, at: int) -> int | None:
        """The keys the press kept before ``at``, over every layer, KV head and row."""
        return kept_keys(dict(enumerate(cache.kept())), at)


def row_of(plain, row: int) -> GrowingCache:
    """A plain cache of row ``row`` of ``plain`` (a copy: every key of every layer)."""
    out = GrowingCache(reserve=0)
    for i, layer in enumerate(plain.layers):
        out.update(layer.keys[row : row + 1], layer.values[row : row + 1], i)
    return out


REAL = (RealCache, RealPress)  # the conditions decoded on a real cache (isinstance)


@dataclass
class RealBatch:
    """Rows decoded together on a real cache: each row's answer ids (``outs``), the bytes one
    row's cache held once its prompt was in it, compressed (``held``; every row holds as much),
    a plain cache's at that length (``full``), each row's share of the time (the cache built,
    the decode) and, for a press, the keys it kept (``kept_keys``, over the rows)."""

    outs: list[list[int]]
    held: int
    full: int
    seconds: float
    kept_keys: int | None = None


def decode_on(model, shape: ModelShape, real: RealCache | RealPress, build: Callable[[], CompressedCache],
              last_ids: list[int], at: int, stop: torch.Tensor, max_new_tokens: int) -> RealBatch:
    """Greedy-decode rows whose prompts (but their last tokens ``last_ids``) fill the cache
    ``build()`` makes (``at`` tokens each), as ``decode.decode_rows`` does on a plain one; its
    bytes read once it holds the prompt compressed (``real.settled`` steps on)."""
    t0, rows = time.perf_counter(), len(last_ids)
    cache = build()
    held = [cache.nbytes() // rows] if not real.settled else []

    def on_step(row, t, token, positions):
        if not held and t == real.settled - 1:
            held.append(cache.nbytes() // rows)

    outs = decode_rows(model, last_ids, at, cache, stop, max_new_tokens, on_step=None if held else on_step,
                       hooks=real.hooks())
    seconds = (time.perf_counter() - t0) / rows
    full = cache_bytes(shape, None, 1, at + real.settled, next(model.parameters()).element_size())
    return RealBatch(outs, held[0], full, seconds, real.kept_keys(cache, at + 1))

"""A KV cache that appends in place, and several prompts' caches stacked into one batch.

transformers' ``DynamicLayer`` appends a decode step's key and value with ``torch.cat``,
which copies the whole cache at every step (on CPU at 2K tokens that is a few ms of a
~47 ms step). ``GrowingLayer`` keeps keys and values in a buffer with room to spare and
writes each step into it; ``keys``/``values`` are views of the filled part, so attention
sees exactly the tensors a ``DynamicLayer`` would hold, without the copy.

``stack_rows`` builds one ``[rows, kv_heads, T, d]`` cache from the caches of several
prompts of the same length ``T``: decoding them as one batch reads the weights once per
step for all rows, which is what a CPU (memory-bound) decode step costs.

    >>> import torch
    >>> c = GrowingCache(reserve=4)
    >>> k = torch.arange(6.).reshape(1, 1, 3, 2)
    >>> c.update(k, k, 0)[0].shape, c.layers[0].capacity()
    (torch.Size([1, 1, 3, 2]), 7)
    >>> c.crop(-1); c.update(k[:, :, :1], k[:, :, :1], 0)[0][0, 0, :, 0].tolist()
    [0.0, 2.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


@dataclass
class Growth:
    """How a cache's buffers grow, shared by the cache and its layers (a layer holds this,
    not its cache: a reference back to the cache would make every dropped cache a cycle,
    freed only when the cycle collector runs).

    reserve: spare tokens allocated on each growth (the decode steps to come);
    expected: the length the cache will reach (a prefill about to run in chunks)."""

    reserve: int = 64
    expected: int = 0


class GrowingLayer(DynamicLayer):
    """A full-attention layer whose keys/values live in a buffer with ``growth.reserve``
    tokens of spare room; appending writes in place, cropping only moves the length."""

    def __init__(self, growth: Growth):
        super().__init__()
        self.growth = growth
        self._k = self._v = None  # [b, kv_heads, capacity, d]
        self._n = 0

    def capacity(self) -> int:
        return 0 if self._k is None else self._k.shape[-2]

    def _view(self) -> None:
        self.keys, self.values = self._k[..., : self._n, :], self._v[..., : self._n, :]

    def _grow(self, k: torch.Tensor, v: torch.Tensor, need: int) -> None:
        # One allocation for everything announced (``GrowingCache.expect``) plus the reserve, so a
        # chunked prefill and the decode steps after it do not reallocate.
        cap = max(need, self.growth.expected) + self.growth.reserve
        kb = k.new_empty(*k.shape[:-2], cap, k.shape[-1])
        vb = v.new_empty(*v.shape[:-2], cap, v.shape[-1])
        if self._n:
            kb[..., : self._n, :] = self.keys
            vb[..., : self._n, :] = self.values
        self._k, self._v = kb, vb

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.device, self.is_initialized = key_states.device, True
        n, q = self._n, key_states.shape[-2]
        if self._k is not None and self._k.shape[:-2] != key_states.shape[:-2]:
            raise ValueError(f"cache rows/heads {tuple(self._k.shape[:-2])} != update {tuple(key_states.shape[:-2])}")
        if n + q > self.capacity():
            self._grow(key_states, value_states, n + q)
        self._k[..., n : n + q, :] = key_states
        self._v[..., n : n + q, :] = value_states
        self._n = n + q
        self._view()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._n

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove and self.is_initialized:
            self._n = max(0, self._n + tokens_to_remove)
            self._view()

    def _rebuild(self, fn) -> None:
        if self._k is not None:
            self._k, self._v = fn(self._k), fn(self._v)
            self._view()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rebuild(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rebuild(lambda t: t[indices, ...])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._rebuild(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def reset(self) -> None:
        self._k = self._v = self.keys = self.values = None
        self._n, self.is_initialized = 0, False


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` whose full-attention layers are ``GrowingLayer``s.

    config: as ``DynamicCache``'s; with it, sliding-window layers stay transformers' own
            (they keep only their window); without it every layer keeps every key (the
            window is applied by the mask), which lets a shared prefix be cropped back.
    reserve: spare tokens allocated on each growth (the decode steps to come).
    """

    def __init__(self, config=None, reserve: int = 64):
        self.growth = Growth(reserve)
        growth = self.growth  # the layer factory holds the growth, not the cache (no cycle)
        if config is None:
            Cache.__init__(self, layer_class_to_replicate=lambda: GrowingLayer(growth))
        else:
            super().__init__(config=config)
            self.layers = [GrowingLayer(growth) if type(layer) is DynamicLayer else layer for layer in self.layers]

    @property
    def reserve(self) -> int:
        return self.growth.reserve

    def expect(self, total_tokens: int) -> None:
        """Announce the length the cache will reach (a prefill about to run in chunks)."""
        self.growth.expected = total_tokens


def snapshot(cache) -> torch.Tensor:
    """A copy of one prompt's cache as a single tensor ``[layers, 2 (k, v), kv_heads, T, d]``.

    One allocation per prompt (not two per layer): a block that large is returned to the
    system when freed, where many per-layer tensors would leave the heap fragmented and
    the process's memory high long after they are gone.
    """
    layers = cache.layers
    if any(not layer.is_initialized or layer.get_seq_length() == 0 for layer in layers):
        raise ValueError("stacking needs every layer cached (no KV-sharing layers)")
    if any(getattr(layer, "is_sliding", False) and not isinstance(layer, GrowingLayer) for layer in layers):
        raise ValueError("stacking needs caches that keep every key; build them with GrowingCache(config=None)")
    k0 = layers[0].keys
    if any(layer.keys.shape != k0.shape or layer.values.shape != k0.shape for layer in layers):
        raise ValueError("stacking needs keys and values of one shape in every layer")
    out = k0.new_empty(len(layers), 2, *k0.shape[1:])
    for i, layer in enumerate(layers):
        out[i, 0], out[i, 1] = layer.keys[0], layer.values[0]
    return out


def stack_rows(rows: list[torch.Tensor], reserve: int) -> GrowingCache:
    """One batched cache from ``snapshot``s of prompts of equal length (row i = rows[i]).

    All layers live in one block ``[layers, 2, rows, kv_heads, T + reserve, d]``; each
    snapshot is dropped from ``rows`` (set to None) as soon as it is copied, so stacking
    needs about one prompt's worth of memory beyond the batch itself.
    """
    first = rows[0]
    if any(r.shape != first.shape for r in rows):
        raise ValueError("stacked prompts must have the same length")
    num_layers, _, kv_heads, length, head_dim = first.shape
    block = first.new_empty(num_layers, 2, len(rows), kv_heads, length + reserve, head_dim)
    for i in range(len(rows)):
        block[:, :, i, :, :length] = rows[i]
        rows[i] = None
    cache = GrowingCache(reserve=reserve)
    for li in range(num_layers):
        layer = GrowingLayer(cache.growth)
        layer.device, layer.is_initialized = block.device, True
        layer._k, layer._v, layer._n = block[li, 0], block[li, 1], length
        layer._view()
        cache.layers.append(layer)
    return cache

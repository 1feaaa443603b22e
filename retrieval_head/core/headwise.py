"""A head-wise KV cache: full KV heads keep every key, streamed ones only sink + recent.

``HeadwiseCache`` is a transformers ``Cache`` built from a keep set (``keep.keep_top``: bool
``[layers, kv_heads]``). In each layer the full KV heads' keys and values live in one
in-place buffer ``[b, n_full, T, d]`` (``kvcache.GrowingLayer``: a decode step writes in
place, no copy of the cache); the streamed KV heads' in a tensor ``[b, n_stream, S, d]``
holding only the keys the next query may see (``keep.stored_positions``), with their
positions ``[S]``. The streamed keys are dropped as each update arrives, so their memory is
really freed; the phases say when:

- ``decode`` (a kvpress press): the prompt's cache is compressed once, at the end of the
  prefill (``compress_at(prompt length)``, which ``headwise_attend.generate`` tells it; untold,
  at the end of the first call); every key generated afterwards is kept. Each layer is
  compressed as its prefill update arrives, so only one layer's uncompressed prompt exists
  at a time (the call's own keys, handed to attention and dropped after it);
- ``all`` (DuoAttention): a streamed head never holds more than sink + recent keys (plus
  the call's new ones, for that call only): a chunked prefill (``prefill_chunk_size``)
  bounds the prefill too;
- ``context`` (a kvpress pipeline): compressed once at the context's end ``context_length``,
  the question and the answer after it kept whole.

Each phase computes exactly what the masked simulation does (``mask.HeadMask(heads,
"stream", phase).hook(at)`` on a plain cache): the same ``stream.stream_keep`` rule, the
sink being each row's first ``sink`` tokens: under left padding (``pad_left``, which
``headwise_attend.generate`` calls with the attention mask) a row's streamed keys sit at its
own positions, ``[b, n_stream, S, d]`` at ``pos [b, S]``, as many per row (``keep.row_slots``).
An update returns a ``SplitKV`` (full and streamed parts), which only the head-wise
attention (``headwise_attend``) reads: run the model through ``retrieval_head.headwise_generate``
(``headwise_attend.generate``), or call it (``model.generate`` included) inside
``intervene(model, hooks=[HeadwiseAttention()])``, telling a fresh cache its left padding
(``pad_left``) first. A filled cache keeps its batch (``check_rows``).
A layer without streamed heads returns plain tensors (the backend computes it, bit for bit).
A keep set of query heads (``[layers, heads]``) holds what ``stream.full_kv_heads`` of it
says; a query head it streams on a full KV head ("mixed", ``keep.mixed_heads``) still sees
only its sink and recent keys (``headwise_attend.mixed_output``), so such a layer too goes
through the head-wise attention.
What a compressed prefix cannot do (crop back, beam reorder, row selection, offloading) is
refused with a ``UserError`` (``cachebase``: what this cache shares with the pressed one).

    >>> from transformers import LlamaConfig
    >>> shape = ModelShape.from_config(LlamaConfig(num_hidden_layers=1, num_attention_heads=2,
    ...                                            num_key_value_heads=2, hidden_size=8))
    >>> cache = HeadwiseCache(shape, torch.tensor([[True, False]]), sink=1, recent=2, phase="all")
    >>> k = torch.arange(10.).reshape(1, 2, 5, 1)
    >>> split, _ = cache.update(k, k, 0)
    >>> split.full.shape[2], split.stream.shape[2], cache.layers[0].stream_pos.tolist()
    (5, 5, [0, 4])
    >>> cache.get_seq_length(), cache.nbytes()
    (5, 56)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from ..errors import UserError
from ..models.shape import ModelShape
from .cachebase import CompressedCache, CompressedLayer, check_rows, refused_by_backends
from .keep import KEEP_PHASES, check_keep, mixed_heads, row_slots, stored_positions
from .kvcache import GrowingLayer, Growth
from .stream import full_kv_heads


@refused_by_backends
@dataclass
class SplitKV:
    """What a head-wise layer's update returns for keys (or values): the full KV heads' part
    ``full [b, n_full, T, d]`` (None: none), the streamed heads' ``stream [b, n_stream, S, d]``
    at positions ``pos [S]``, which KV heads each part holds, the layer's logical length
    ``length`` (keys cached, the call's included) and the streaming rule (``sink``,
    ``recent``, ``at``: where the cache is compressed once; None: at every step; ``start``:
    each row's first real position under left padding, the positions then per row ``pos [b, S]``)."""

    full: torch.Tensor | None
    stream: torch.Tensor
    pos: torch.Tensor
    full_idx: torch.Tensor
    stream_idx: torch.Tensor
    full_q: torch.Tensor  # the query heads each part serves, grouped per KV head
    stream_q: torch.Tensor
    mixed: torch.Tensor  # indices into full_q: query heads that stream on a full KV head (``keep.mixed_heads``)
    length: int
    sink: int
    recent: int
    at: int | None
    start: torch.Tensor | None = None

    @property
    def kv_heads(self) -> int:
        return len(self.full_idx) + len(self.stream_idx)


def query_heads(kv_idx: torch.Tensor, group: int) -> torch.Tensor:
    """The query heads (long) served by KV heads ``kv_idx``, grouped per KV head.

    >>> query_heads(torch.tensor([0, 2]), 2).tolist()
    [0, 1, 4, 5]
    """
    return (kv_idx[:, None] * group + torch.arange(group, device=kv_idx.device)).flatten()


class HeadwiseLayer(CompressedLayer):
    """One layer: ``full`` (a ``GrowingLayer`` over the full KV heads) and the streamed
    heads' ``stream_keys``/``stream_values`` at positions ``stream_pos``. ``mixed`` (given as
    bool ``[heads]``, held as indices into ``full_q``): query heads that stream on a full KV
    head, which the attention restricts."""

    kind = "head-wise"

    def __init__(self, keep_row: torch.Tensor, window: int | None, sink: int, recent: int, phase: str,
                 context_length: int | None, growth: Growth, group: int = 1, mixed: torch.Tensor | None = None):
        super().__init__()
        self.full_idx = keep_row.nonzero().flatten()
        self.stream_idx = (~keep_row).nonzero().flatten()
        self.full_q, self.stream_q = query_heads(self.full_idx, group), query_heads(self.stream_idx, group)
        self.mixed = torch.zeros(0, dtype=torch.long) if mixed is None else mixed[self.full_q].nonzero().flatten()
        self.window, self.sink, self.recent, self.phase = window, sink, recent, phase
        self.at = context_length if phase == "context" else None  # decode: set by the first update
        self.full = GrowingLayer(growth) if len(self.full_idx) else None
        self.stream_keys = self.stream_values = self.stream_pos = None
        self.start = None  # long [b]: each row's first real position (left padding; HeadwiseCache.pad_left)
        self.length = 0

    def _part(self, states: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return states if len(idx) == states.shape[1] else states[:, idx.to(states.device)]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        check_rows(self, key_states.shape[0])
        n, q = self.length, key_states.shape[-2]
        self.length = n + q
        if self.phase == "decode" and self.at is None:
            self.at = self.length  # the first call is the prefill: compressed at its end
        fk = fv = None
        if self.full is not None:
            fk, fv = self.full.update(self._part(key_states, self.full_idx), self._part(value_states, self.full_idx))
            if not len(self.stream_idx) and not len(self.mixed):
                return fk, fv  # nothing streamed: plain tensors, the backend computes the layer
        sk, sv = self._part(key_states, self.stream_idx), self._part(value_states, self.stream_idx)
        dev = key_states.device
        pos = torch.arange(n, n + q, device=dev)
        start = None if self.start is None else self.start.to(dev)
        if start is not None:
            pos = pos.expand(len(start), q)  # per row: its sink starts at its first real token
        if self.stream_keys is not None:
            sk, sv = torch.cat([self.stream_keys, sk], dim=-2), torch.cat([self.stream_values, sv], dim=-2)
            pos = torch.cat([self.stream_pos, pos], dim=-1)
        # Held from now on: what the next query may see. The call itself sees sk (dropped after it).
        # Once compressed (decode, context) a full-attention layer keeps every new key: no rule to run.
        settled = self.at is not None and n >= self.at and self.window is None
        if len(self.stream_idx):  # (a layer of full KV heads and mixed query heads holds nothing here)
            self.hold(sk, sv, pos, None if settled else
                      stored_positions(pos, self.length, self.sink, self.recent, self.window, self.at, start))
        rule = (pos, self.full_idx, self.stream_idx, self.full_q.to(dev), self.stream_q.to(dev), self.mixed.to(dev),
                self.length, self.sink, self.recent, self.at, start)
        return SplitKV(fk, sk, *rule), SplitKV(fv, sv, *rule)

    def hold(self, sk: torch.Tensor, sv: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor | None) -> None:
        """Keep the streamed keys ``sk``/values ``sv`` ``[b, n, P, d]`` at positions ``pos``
        (``[P]``, or per row ``[b, P]``) that ``keep`` (bool, as ``pos``; None: all) says."""
        if keep is None or bool(keep.all()):
            self.stream_keys, self.stream_values, self.stream_pos = sk, sv, pos
        elif pos.ndim == 1:
            idx = keep.nonzero().flatten()
            self.stream_keys = sk.index_select(-2, idx).contiguous()
            self.stream_values = sv.index_select(-2, idx).contiguous()
            self.stream_pos = pos[idx]
        else:
            idx = row_slots(keep)[:, None, :, None]  # [b, 1, S, 1]: each row's own positions, as many per row
            self.stream_keys = sk.gather(-2, idx.expand(*sk.shape[:2], -1, sk.shape[-1]))
            self.stream_values = sv.gather(-2, idx.expand(*sv.shape[:2], -1, sv.shape[-1]))
            self.stream_pos = pos.gather(-1, idx[:, 0, :, 0])

    def tensors(self) -> list[torch.Tensor]:
        """The tensors held: the full heads' keys and values (filled part), the streamed heads'."""
        out = [] if self.full is None or self.full.keys is None else [self.full.keys, self.full.values]
        return out + ([] if self.stream_keys is None else [self.stream_keys, self.stream_values])

    def reset(self) -> None:
        if self.full is not None:
            self.full.reset()
        self.stream_keys = self.stream_values = self.stream_pos = self.start = None
        self.length, self.is_initialized = 0, False
        self.at = self.at if self.phase == "context" else None


class HeadwiseCache(CompressedCache):
    """A KV cache that keeps every key only for the KV heads of ``keep`` (bool ``[layers,
    kv_heads]``, or query heads ``[layers, heads]``: a KV head is full when any of its query
    heads is kept); the others stream (``sink`` first keys, ``recent`` last, the query
    included), compressed as ``phase`` says (``decode``, ``all``, ``context`` with
    ``context_length``). ``reserve``: spare tokens of the full heads' buffers. ``keep`` is
    then the KV heads kept, ``mixed`` the query heads streamed on full ones."""

    kind = "head-wise"

    def __init__(self, shape: ModelShape, keep: torch.Tensor, sink: int, recent: int, phase: str = "decode",
                 context_length: int | None = None, reserve: int = 64):
        check_keep(keep, shape)
        if phase not in KEEP_PHASES:
            raise UserError(f"phase must be one of {KEEP_PHASES}, got {phase!r}")
        if (phase == "context") != (context_length is not None):
            raise UserError("phase context needs context_length (and only it takes one)")
        if sink < 0 or recent < 1:
            raise UserError("streaming needs sink >= 0 and recent >= 1 (the query sees itself)")
        self.keep, self.mixed = full_kv_heads(shape, keep), mixed_heads(shape, keep)
        self.shape, self.sink, self.recent, self.phase = shape, sink, recent, phase
        self.growth = Growth(reserve)
        layers = [HeadwiseLayer(self.keep[i], shape.windows[i], sink, recent, phase, context_length, self.growth,
                                shape.group, self.mixed[i]) for i in range(shape.num_layers)]
        super().__init__(layers=layers)

    def absorb(self, prefilled: Cache) -> "HeadwiseCache":
        """Fill a fresh phase-decode cache from a plain cache holding the prompt's prefill
        (``layers[i].keys``/``values`` ``[b, kv_heads, T, d]``, every key): a kvpress press
        compressing the cache its forward pass made. It holds what its own prefill would (the
        same keys, compressed at ``T``); ``prefilled`` is left as it was, so one prefill serves
        several keep sets."""
        length = prefilled.get_seq_length()
        self.compress_at(length)  # refuses all but a fresh phase-decode cache
        for layer, plain in zip(self.layers, prefilled.layers):
            if plain.keys.shape[-2] != length:
                raise UserError("absorb takes a cache holding every key (not a sliding-window layer's last ones)")
            layer.update(plain.keys, plain.values)
        return self

    def allocated(self) -> int:
        """Bytes allocated for keys and values, spare room of the full heads' buffers included."""
        total = 0
        for layer in self.layers:
            if layer.full is not None and layer.full.keys is not None:
                k = layer.full.keys  # a view of the buffer: capacity() tokens along dim -2
                total += 2 * k.shape[0] * k.shape[1] * layer.full.capacity() * k.shape[-1] * k.element_size()
            if layer.stream_keys is not None:
                total += 2 * layer.stream_keys.numel() * layer.stream_keys.element_size()
        return total

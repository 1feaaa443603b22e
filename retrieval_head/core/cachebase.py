"""What every KV cache that really drops keys shares: the head-wise cache (``headwise``:
whole KV heads full or streamed) and the pressed cache (``pressed``: each KV head the keys a
press keeps).

- ``CompressedLayer``: a layer that keeps logical positions (one mask column per position,
  ``get_mask_sizes``) and refuses, in one line, what needs the dropped keys (crop back, beam
  reorder, row selection, repeating filled rows, offloading);
- ``CompressedCache``: where a fresh cache is compressed in phase decode (``compress_at``),
  each row's left padding (``pad_left``, so a row's sink and a press's ``Seen.start`` are its
  own first tokens, not its pads) and the bytes held (``nbytes``);
- ``check_rows``: a filled cache keeps its batch; ``RUN_IT``: what a backend handed a cache's
  wrapped keys is told (only ``headwise_attend.HeadwiseAttention`` reads them).

    >>> left_start(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist()
    [2, 0]
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..errors import UserError

RUN_IT = ("a head-wise or pressed cache's keys are read only by its attention: call "
          "retrieval_head.headwise_generate(model, cache, ...), or run the model inside `with "
          "retrieval_head.intervene(model, hooks=[retrieval_head.HeadwiseAttention()])`")


def read_by_a_backend(wrapped) -> None:
    """Only the head-wise attention reads a cache's wrapped keys: a backend that tries is told the fix."""
    raise UserError(RUN_IT)


# What a backend reads first of its keys (sdpa and eager: shape; flash: transpose): refused, with the fix
BACKEND_READS = ("shape", "dtype", "device", "size", "transpose", "view", "reshape", "contiguous", "to")


def refused_by_backends(cls):
    """Class decorator: every attribute a backend reads first (``BACKEND_READS``) refuses."""
    for name in BACKEND_READS:
        setattr(cls, name, property(read_by_a_backend))
    return cls


def refuse(what: str, kind: str = "compressed") -> UserError:
    return UserError(f"a {kind} cache cannot {what}: its dropped keys are gone (use a plain cache, with "
                     "retrieval_head.HeadMask(heads, \"stream\", ...) or a press's PressHeads for the same answers)")


def check_rows(layer: "CompressedLayer", rows: int) -> None:
    """Refuse a call whose batch is not the rows the layer holds, or was told the padding of."""
    held = next((t.shape[0] for t in layer.tensors()), None)
    if held is not None and held != rows:
        raise UserError(f"a {layer.kind} cache holding {held} rows got a call of {rows} rows: a filled cache keeps "
                        "its batch (num_return_sequences > 1 needs a fresh cache)")
    if layer.start is not None and len(layer.start) != rows:
        raise UserError(f"the {layer.kind} cache was told the padding of {len(layer.start)} rows (pad_left) but the "
                        f"model runs {rows}: pass pad_left the mask of the rows it runs, e.g. "
                        "attention_mask.repeat_interleave(num_return_sequences, dim=0)")


def left_start(attention_mask: torch.Tensor) -> torch.Tensor:
    """long ``[b]``: each row's first real token (``attention_mask [b, T]``: 0 = pad); right or
    inner padding refused."""
    real = attention_mask.bool()
    start = real.long().argmax(-1)
    after = torch.arange(real.shape[-1], device=real.device)[None, :] >= start[:, None]
    if not bool(torch.equal(real, after)):
        raise UserError("a compressed cache takes left padding only (each row: pads, then its tokens); "
                        "pad on the left (tokenizer.padding_side = 'left')")
    return start


class CompressedLayer(CacheLayerMixin):
    """A layer of a cache that drops keys: ``length`` logical positions (the keys cached),
    ``start`` (long ``[b]``, each row's first real position; None: no padding), ``at`` (where
    phase decode compresses: set by ``compress_at`` or the first update); ``tensors()`` the
    keys and values held."""

    kind = "compressed"  # what its messages call the cache
    is_sliding = False  # every layer keeps logical positions: masks are built for the whole length
    is_compileable = False
    is_croppable = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.is_initialized = key_states.device, True

    def tensors(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0  # one logical position per column; attention picks a head's

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        raise refuse("be cropped back (a compressed prefix is gone)", self.kind)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise refuse("reorder rows (beam search)", self.kind)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise refuse("select rows", self.kind)

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise refuse("repeat its rows once filled (num_return_sequences > 1 needs a fresh cache)", self.kind)

    def offload(self):
        raise refuse("be offloaded", self.kind)

    def prefetch(self):
        raise refuse("be offloaded", self.kind)


class CompressedCache(Cache):
    """A cache of ``CompressedLayer``s compressed as ``phase`` says (``decode``: after the
    prefill; ``context``: at the context's end; ``all``: at every step, streaming only)."""

    phase: str
    kind = "compressed"

    def offload(self, layer_idx: int, only_non_sliding: bool = True):
        raise refuse("be offloaded", self.kind)

    def compress_at(self, at: int) -> None:
        """Phase decode: where the prompt's cache is compressed (its length), told before the
        prefill (a prefill in chunks); untold, at the end of the first call."""
        if self.phase != "decode" or self.get_seq_length():
            raise UserError("compress_at is for a fresh phase-decode cache (before its prefill)")
        for layer in self.layers:
            layer.at = at

    def pad_left(self, attention_mask: torch.Tensor) -> None:
        """Tell a fresh cache its rows' left padding (``attention_mask [b, T]``: 0 = pad), so
        each row's sink (a press: its real keys, ``Seen.start``) starts at its own first token,
        not its pads; the same ``start`` makes the masked simulation's."""
        if self.get_seq_length():
            raise UserError("pad_left is for a fresh cache (before its prefill)")
        start = left_start(attention_mask)
        for layer in self.layers:
            layer.start = start if bool(start.any()) else None

    def nbytes(self) -> int:
        """Bytes of the keys and values held (filled parts; ``allocated`` adds spare room)."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.tensors())

"""Streaming heads: a head that attends only to the first ``sink`` and the last ``recent``
keys (DuoAttention's streaming heads, StreamingLLM's sink + window), and how much of the
KV cache that saves.

``StreamHeads`` is the hook (``visible.HidesKeys``; ``mask.HeadMask(heads, mode="stream", ...)``
builds it) and ``stream_keep`` its rule: which keys a streamed query row sees, from the
rows' and keys' positions and, per batch row, where that row's cache was compressed:

- compressed at every step (``at`` None; DuoAttention, a phase-``all`` mask): row ``p``
  sees keys ``j < sink`` and ``p - recent < j <= p``;
- compressed once at ``C`` (``at``; a phase-``decode`` mask compresses the prompt's cache
  after its prefill, as kvpress's presses do, ``C`` being the prefill's length): a row
  ``p >= C`` sees keys ``j < sink``, ``C - recent <= j < C`` and every key from ``C`` on;
  rows before ``C`` were computed before the compression and see every key: a keep set
  (sink + recent) under ``visible.sees_compressed``, the rule a press's keep set follows
  (``pressing.PressHeads``). A phase-
  ``context`` mask (kvpress's pipeline) is the same rule with ``C`` the context's end, applied
  to the prefill's rows from ``C`` on (the question): with ``C`` the prompt's length it is
  phase ``decode`` exactly.

"The first ``sink`` keys" are a row's own: under left padding (``start``, per row, its first
real position) a padded row's sink is its first tokens, not its pads, so it streams as it
would alone.

A decode step of a streamed head is computed whole (``attend.decode_step``, the keys it
may not see hidden); a multi-token call (phase ``all``'s prefill, phase ``context``'s rows
from ``C`` on) recomputes only the streamed heads' rows concerned as one group under one
shared ``[query, key]`` mask (``visible.HidesKeys.output``), never a per-head mask over the
whole prompt (a chunked prefill bounds it). Both are exact: the same as eager attention under the explicit per-head mask
(tests/test_streaming.py). The cache itself is not cut (kvpress's DuoAttentionPress also
masks): ``kv_kept`` says exactly what a compressed cache would hold, and
``headwise.HeadwiseCache`` is that cache (the same rule, the keys really dropped).
"""

from __future__ import annotations

from fractions import Fraction

import torch

from ..models.shape import ModelShape
from .attend import Call, key_columns
from .hook import OnDevice, check_heads
from .visible import HidesKeys, rows_from, sees_compressed


def stream_keep(qpos: torch.Tensor, kpos: torch.Tensor, sink: int, recent: int,
                at: torch.Tensor | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
    """bool: the keys ``kpos [T]`` a streamed query row at ``qpos [r]`` sees, ``[r, T]``
    (compressed at every step, ``at`` None) or ``[b, 1, r, T]`` (``at``: long ``[b]``, where
    each batch row's cache was compressed once). ``start`` (long ``[b]``): each row's first
    real position (left padding puts pads before it): its sink is the ``sink`` keys from
    there (not its pads, which the backend hides anyway), ``[b, 1, r, T]``. Keys held at
    different positions per row: ``kpos [b, T]``. Causal order and the layer's window are not
    in it (``attend.blocked_by_position``).

    >>> stream_keep(torch.tensor([9]), torch.arange(10), 2, 3).nonzero()[:, 1].tolist()
    [0, 1, 7, 8, 9]
    >>> stream_keep(torch.tensor([9]), torch.arange(10), 2, 3, torch.tensor([6]))[0, 0].nonzero()[:, 1].tolist()
    [0, 1, 3, 4, 5, 6, 7, 8, 9]
    >>> padded = stream_keep(torch.tensor([9]), torch.arange(10), 2, 3, start=torch.tensor([0, 4]))  # row 1: 4 pads
    >>> padded[1, 0].nonzero()[:, 1].tolist()
    [4, 5, 7, 8, 9]
    """
    q, k = qpos[:, None], key_columns(kpos)
    if start is None:
        sinks = k < sink
    else:
        first = start.reshape(-1, 1, 1, 1)
        sinks = (k >= first) & (k < first + sink)
    if at is None:
        return sinks | (k > q - recent)
    return sees_compressed(qpos, kpos, at, sinks | (k >= at.reshape(-1, 1, 1, 1) - recent))  # a keep set


class StreamHeads(HidesKeys):
    """The streamed heads of each layer see only their sink and recent keys (``stream_keep``),
    applied as every rule that hides keys is (``visible.HidesKeys``).

    heads: bool ``[layers, heads]``, or ``[batch, layers, heads]`` (each row its own heads).
    at: per batch row (long ``[b]``, or an int for all), where its cache was compressed
        once; None: compressed at every step. ``compress(at)`` tells a new one (the next
        prompt decoded in the same scope).
    decode_only: act only on decode steps (a phase-``decode`` mask: the prefill is left
        whole, and compressed at ``at`` once it is done).
    start: per batch row (long ``[b]``), its first real position: a left-padded row's sink
        is its first ``sink`` tokens, not its pads (None: every row starts at 0).
    """

    def __init__(self, heads: torch.Tensor, sink: int, recent: int, at: torch.Tensor | int | None = None,
                 decode_only: bool = False, start: torch.Tensor | None = None):
        self.heads, self.sink, self.recent, self.decode_only = heads, sink, recent, decode_only
        self.on_device = OnDevice(lambda layer, dev: heads[..., layer, :].reshape(-1, heads.shape[-1]).to(dev))
        self.compress(at, start)

    def compress(self, at: torch.Tensor | int | None, start: torch.Tensor | None = None) -> None:
        """Where each batch row's cache is compressed from now on (None: at every step), and
        where each row's tokens start (its sink; None: at 0)."""
        self.at = None if at is None else torch.as_tensor(at, dtype=torch.long).reshape(-1)
        self.at_on = OnDevice(lambda _, dev: self.at.to(dev))
        self.at_min = None if at is None else int(self.at.min())  # host-side: read at every step
        self.start = None if start is None else torch.as_tensor(start, dtype=torch.long).reshape(-1)
        self.start_on = OnDevice(lambda _, dev: self.start.to(dev))

    def check(self, shape: ModelShape) -> None:
        check_heads(self.heads, shape)

    def _at(self, device: torch.device) -> torch.Tensor | None:
        if self.at is None and self.decode_only:
            raise RuntimeError("a decode-phase stream hook needs each row's compression point (the prompt's "
                               "prefill length): pass at=..., or call compress(at) before decoding")
        return None if self.at is None else self.at_on.get(None, device)

    def touched(self, call: Call) -> torch.Tensor:
        return self.on_device.get(call.layer, call.query.device)  # [b or 1, H]

    def first_row(self, call: Call) -> int | None:
        if self._at(call.query.device) is None:
            return 0  # compressed at every step: every row streams
        return rows_from(call, self.at_min)

    def sees(self, call: Call, qpos: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        start = None if self.start is None else self.start_on.get(None, kpos.device)
        keep = stream_keep(qpos, kpos, self.sink, self.recent, self._at(kpos.device), start)
        return keep if keep.ndim == 4 else keep[None, None]  # [b or 1, 1, r, T], shared by the streamed heads


def full_kv_heads(shape: ModelShape, kept: torch.Tensor) -> torch.Tensor:
    """bool ``[layers, kv_heads]``: the KV heads that keep their whole cache, from the heads
    kept full (``[layers, heads]`` query heads, or ``[layers, kv_heads]``). Under GQA a KV
    head can be compressed only when every query head it serves streams."""
    if kept.shape[-1] == shape.num_kv_heads:
        return kept.bool()
    return kept.bool().reshape(shape.num_layers, shape.num_kv_heads, shape.group).any(-1)


def kv_kept(shape: ModelShape, length: int, sink: int, recent: int, full: torch.Tensor) -> Fraction:
    """The fraction of the model's KV cache at ``length`` tokens a compressed cache keeps:
    full KV heads (``full``: bool ``[layers, kv_heads]``) hold what the layer holds
    (``length``, or its window), streamed ones at most ``sink + recent`` of that.

    >>> from transformers import MistralConfig
    >>> s = ModelShape.from_config(MistralConfig(num_hidden_layers=2, num_attention_heads=4,
    ...                                          num_key_value_heads=2, hidden_size=32))
    >>> kv_kept(s, 1000, 4, 96, torch.tensor([[True, False], [False, False]]))
    Fraction(13, 40)
    """
    held = [min(length, w) if w else length for w in shape.windows]
    kept = sum(h if f else min(h, sink + recent) for h, row in zip(held, full.tolist()) for f in row)
    return Fraction(kept, sum(held) * shape.num_kv_heads)

"""The attention tap: per-head attention mass of chosen query rows, reduced on the spot.

A head-identification method that is not the retrieval score asks "how much softmax mass
does query row ``p`` put on keys ``[lo, hi)``?" for a few rows of a prefill (query-focus:
the question's rows on the needle; induction / echo: the repeated tokens' rows on one
earlier key). ``AttentionTap`` is the hook (``hook.Hook``) that answers it inside
``intervene(model, hooks=[tap])``: for every call the backend computes it picks the tapped
rows that call computes (absolute positions, so chunked prefills and prefix reuse are
fine), recomputes their float32 score rows as the backend masks them
(``attend.masked_scores``: causal order, the layer's sliding window, the mask the
implementation built, softcap), takes the softmax (with sink logits, ``attend.probabilities``)
and keeps only the per-head mass on each row's interval. No ``[T, T]`` matrix is kept: at most
``ROW_CHUNK`` rows' scores exist at a time. The backend's own output is untouched.

Positions assume the cache holds every key from position 0 (``kvcache.GrowingCache``,
which both experiments use, or no cache): the call's queries are the last ``q_len`` keys.

Worked example: one head whose row 2 puts probabilities [0.1, 0.7, 0.2] on keys 0..2;
tapping row 2 on [1, 2) gives 0.7; tapping rows 1 and 2 (row 1, uniform over keys 0..1,
on [0, 1): 0.5) gives their mean, (0.5 + 0.7) / 2 = 0.6::

    >>> import math
    >>> q = torch.zeros(1, 1, 3, 1); k = torch.tensor([[math.log(.1), math.log(.7), math.log(.2)]]).reshape(1, 1, 3, 1)
    >>> q[..., 2, 0] = 1.0; q[..., 1, 0] = 0.0      # row 1: uniform over its keys 0..1
    >>> t = AttentionTap(torch.tensor([2]), torch.tensor([1]), torch.tensor([2]))
    >>> t.observe(0, q, k, None, 1.0); round(float(t.mean(1)[0, 0, 0]), 4)
    0.7
    >>> t = AttentionTap(torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([1, 2]))
    >>> t.observe(0, q, k, None, 1.0); round(float(t.mean(1)[0, 0, 0]), 4)
    0.6
"""

from __future__ import annotations

import time

import torch

from .attend import Call, backend_mask, masked_scores, probabilities
from .hook import Hook

ROW_CHUNK = 256  # tapped rows scored at once (bounds the float32 score block)


class AttentionTap(Hook):
    """Mean attention mass of tapped query rows on their key intervals, per layer and head.

    rows: long ``[R]`` absolute query positions; lo, hi: long ``[R]``, row i's keys
    ``[lo[i], hi[i])``. Every batch row is tapped at the same positions. ``mean(num_layers)``
    gives float64 ``[layers, batch, heads]`` (NaN for a layer that saw no tapped row).
    lo, hi ``[R, M]``: M intervals per row from one softmax (``[layers, batch, heads, M]``).
    """

    def __init__(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
        self.rows, self.lo, self.hi = (torch.as_tensor(x, dtype=torch.long) for x in (rows, lo, hi))
        self.several = self.lo.ndim == 2
        if self.lo.ndim == 1:
            self.lo, self.hi = self.lo[:, None], self.hi[:, None]
        if self.rows.ndim != 1 or self.lo.shape != self.hi.shape or self.lo.shape[0] != len(self.rows):
            raise ValueError("tap rows must be [R], lo and hi [R] or [R, M]")
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.seconds = 0.0  # time spent tapping (the method's cost on top of the forward pass)

    def observe(self, layer: int, query, key, attention_mask, scaling, softcap=None, sinks=None,
                window: int | None = None) -> None:
        """Add the mass of the tapped rows this call computes (query [b, H, q, d], key [b, KV, T, d])."""
        self.delegated(Call(layer, query, key, None, attention_mask, scaling, softcap, sinks, window))

    def delegated(self, call: Call) -> None:
        """The hook: every call the backend computes (prefill chunks), with the query it gets."""
        t0 = time.perf_counter()
        q_len, kv_len = call.query.shape[2], call.key.shape[2]
        start = kv_len - q_len
        inside = (self.rows >= start) & (self.rows < kv_len)
        if not inside.any():
            return
        rows, lo, hi = self.rows[inside], self.lo[inside], self.hi[inside]
        device = call.query.device
        for c in range(0, len(rows), ROW_CHUNK):
            r, a, z = rows[c:c + ROW_CHUNK], lo[c:c + ROW_CHUNK], hi[c:c + ROW_CHUNK]
            local = r - start  # the rows of this call
            scores = masked_scores(call.query[:, :, local.to(device), :], call.key, call.scale, call.softcap,
                                   qpos=r.to(device), kpos=torch.arange(kv_len, device=device), window=call.window,
                                   mask=backend_mask(call.mask, local, kv_len), upcast=True)  # [b, H, r, T]
            probs = probabilities(scores, call.sinks)
            j = torch.arange(kv_len, device=probs.device)[None, :, None]
            span = (j >= a.to(j.device)[:, None, :]) & (j < z.to(j.device)[:, None, :])  # [r, T, M]
            mass = torch.einsum("bhrt,rtm->bhm", probs, span.float()).double().cpu()  # [b, H, M], summed over rows
            self.sums[call.layer] = self.sums.get(call.layer, 0) + mass
            self.counts[call.layer] = self.counts.get(call.layer, 0) + len(r)
        self.seconds += time.perf_counter() - t0

    def mean(self, num_layers: int) -> torch.Tensor:
        """float64 ``[layers, batch, heads]``: each head's mass averaged over the tapped rows."""
        ref = next(iter(self.sums.values()), None)
        if ref is None:
            raise RuntimeError("the tap saw none of its rows (were they prefilled inside the scope?)")
        out = torch.full((num_layers, *ref.shape), float("nan"), dtype=torch.float64)
        for layer, s in self.sums.items():
            out[layer] = s / self.counts[layer]
        return out if self.several else out[..., 0]

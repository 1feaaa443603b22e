"""The attention arithmetic every intervention shares: scores, masks, softmax, output.

An attention call (``Call``) is what a backend receives: the query ``[b, H, q, d]``, the
cached keys and values ``[b, KV, T, d]`` (grouped: query head h reads KV head
``h // (H // KV)``, the cache is never copied per head), the backend's mask, the scaling,
and the layer's softcap, sink logits and sliding window. The functions here compute from
it what the probe, the head masks, streaming and the tap need, honouring what the backend
would do:

- ``logits``: float32 scores ``[b, H, r, T]`` with scaling and softcap (a bf16 score row
  would round near-ties together and make an argmax arbitrary);
- ``blocked_by_position``: causal order and the layer's window, from explicit query and key
  positions (a cache that keeps only some keys passes the positions it keeps);
- ``backend_mask``: the mask the implementation's mask function built, for chosen rows: a
  2-D ``[b, >= T]`` padding mask (flash) or a 4-D bool/additive one (eager, sdpa);
- ``masked_scores``: all of the above on a score block, in place;
- ``probabilities`` (softmax, with sink logits that take mass but have no value) and
  ``output`` (probabilities times values, back in the backends' ``[b, q, H, d]`` layout);
- ``decode_step``: one single-token call computed whole (what the probe and the streamed
  heads' decode steps run); ``attend_grouped``: every head of a call under a shared bool
  mask, keys grouped as cached (a head-wise cache's groups); ``attend_heads``: chosen heads
  of a multi-token call the same way (the streamed heads' prefill).

Worked example: one head, three keys, the query at position 2; key 0 falls outside a
window of 2, so the softmax is over keys 1 and 2 (logits 1 and 0)::

    >>> q = torch.ones(1, 1, 1, 1); k = torch.tensor([5., 1., 0.]).reshape(1, 1, 3, 1)
    >>> s = masked_scores(q, k, 1.0, qpos=torch.tensor([2]), kpos=torch.arange(3), window=2)
    >>> s.flatten().tolist()
    [-inf, 1.0, 0.0]
    >>> [round(p, 4) for p in probabilities(s).flatten().tolist()]
    [0.0, 0.7311, 0.2689]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Call:
    """One attention call as the backend receives it (the query after any hook's change).

    query [b, H, q, d]; key/value [b, KV, T, d]: the query's own keys are the last q, and
    the cache holds every key from position 0 (``kvcache.GrowingCache``), so query i sits at
    ``T - q + i`` (``qpos``) and key j at j (``kpos``).
    mask: the backend's mask (None, 2-D ``[b, >= T]`` padding, or 4-D ``[b or 1, 1, q, T]``
    bool or additive). window: the layer's sliding window (None: full attention).
    """

    layer: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor | None  # None where only scores are asked for (``tap.AttentionTap.observe``)
    mask: torch.Tensor | None
    scaling: float | None
    softcap: float | None = None
    sinks: torch.Tensor | None = None  # [H] sink logits (``s_aux``, GPT-OSS)
    window: int | None = None

    @property
    def is_decode(self) -> bool:
        """A decode step: a single-token query (where the probe scores and decode-phase masks act)."""
        return self.query.shape[2] == 1

    @property
    def scale(self) -> float:
        return self.scaling if self.scaling is not None else self.query.shape[-1] ** -0.5

    def qpos(self) -> torch.Tensor:
        """long ``[q]``: the queries' positions (the last q keys)."""
        q, kv_len = self.query.shape[2], self.key.shape[2]
        return torch.arange(kv_len - q, kv_len, device=self.query.device)

    def kpos(self) -> torch.Tensor:
        """long ``[T]``: the keys' positions."""
        return torch.arange(self.key.shape[2], device=self.query.device)

    def replace(self, **fields) -> "Call":
        return Call(**{**self.__dict__, **fields})


def layer_window(module, kwargs: dict) -> int | None:
    """The layer's sliding window (None = full attention): the ``sliding_window`` the
    modeling file passes to the attention call, which flash honours (None there is a full
    layer even where the module has the attribute, e.g. EXAONE 4); without that kwarg, the
    module's ``sliding_window`` attribute (Qwen2-MoE sets it and windows by the mask only)."""
    window = kwargs["sliding_window"] if "sliding_window" in kwargs else getattr(module, "sliding_window", None)
    return None if window is None else int(window)


def _fp32_matmul(q: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """q [b, KV, r, d] @ key [b, KV, T, d]^T in float32, without copying the cache to fp32
    where the device can (CUDA half-precision matmul with fp32 output)."""
    if q.dtype == torch.float32:
        return torch.matmul(q, key.transpose(-1, -2))
    if q.is_cuda:
        b, kv, r, d = q.shape
        try:
            out = torch.bmm(q.reshape(b * kv, r, d), key.reshape(b * kv, -1, d).transpose(1, 2),
                            out_dtype=torch.float32)
            return out.reshape(b, kv, r, -1)
        except (RuntimeError, TypeError):  # older torch: no out_dtype
            pass
    return torch.matmul(q.float(), key.float().transpose(-1, -2))


def logits(query: torch.Tensor, key: torch.Tensor, scale: float, softcap: float | None = None,
           upcast: bool = False) -> torch.Tensor:
    """float32 scores ``[b, H, r, T]`` (a new tensor): ``query [b, H, r, d]`` against
    ``key [b, KV, T, d]``, scaled, softcapped (``softcap * tanh(s / softcap)``, Gemma 2).

    upcast: multiply float32 copies of both (the tap's few rows; a subset of heads),
    rather than the fp32-output matmul that leaves the cache as it is (a decode step).
    """
    b, num_heads, r, d = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    q = query.reshape(b, kv_heads, num_heads // kv_heads * r, d)  # GQA: a KV head's query rows together
    s = torch.matmul(q.float(), key.float().transpose(-1, -2)) if upcast else _fp32_matmul(q, key)
    s = s.reshape(b, num_heads, r, kv_len)
    s.mul_(scale)
    if softcap is not None:
        s.div_(softcap).tanh_().mul_(softcap)
    return s


def key_columns(kpos: torch.Tensor) -> torch.Tensor:
    """Key positions laid out to compare with query rows ``[r, 1]``: ``kpos [T]`` as ``[1, T]``,
    per batch row ``[b, T]`` as ``[b, 1, 1, T]`` (the comparison then ``[b, 1, r, T]``), per
    batch row and KV head ``[b, kv, T]`` as ``[b, kv, 1, T]``."""
    if kpos.ndim == 1:
        return kpos[None, :]
    return kpos[:, None, None, :] if kpos.ndim == 2 else kpos[:, :, None, :]


def blocked_by_position(qpos: torch.Tensor, kpos: torch.Tensor, window: int | None) -> torch.Tensor:
    """bool ``[r, T]``: True where query ``qpos[i]`` may not see key ``kpos[j]``: a later
    key, or one outside the window (transformers' ``q - kv < window`` keeps it). Keys held
    at different positions per batch row (``kpos [b, T]``): ``[b, 1, r, T]``.

    >>> blocked_by_position(torch.tensor([3]), torch.arange(5), 2).int().tolist()
    [[1, 1, 0, 0, 1]]
    """
    q, k = qpos[:, None], key_columns(kpos)
    blocked = k > q  # compared against [r, 1] bounds: no [r, T] integer temporary
    if window is not None:
        blocked |= k <= q - window
    return blocked


def backend_mask(mask: torch.Tensor | None, rows: slice | torch.Tensor, kv_len: int) -> torch.Tensor | None:
    """The backend's mask for query rows ``rows`` of the call (a slice or long index of
    its q rows) as ``[b or 1, 1, r or 1, T]``: bool (True = may attend) or additive float.

    A 2-D mask is flash's padding mask ``[b, >= T]`` (nonzero = a real token; its last T
    columns are the cached keys), the same for every row.
    """
    if mask is None:
        return None
    if mask.ndim == 2:
        if mask.shape[-1] < kv_len:
            raise UnsupportedModelError(
                f"a 2-D attention mask of {mask.shape[-1]} columns for {kv_len} cached keys "
                "(a static cache?) cannot be read"
            )
        return mask[:, -kv_len:].bool()[:, None, None, :]
    if isinstance(rows, torch.Tensor):
        return mask[:, :, rows.to(mask.device), -kv_len:]
    return mask[:, :, rows, -kv_len:]


def as_allowed(mask: torch.Tensor) -> torch.Tensor:
    """A ``backend_mask`` as bool (additive masks are 0 where allowed)."""
    return mask if mask.dtype == torch.bool else mask == 0


def apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> None:
    """In place: -inf where a bool mask is False; an additive mask is added."""
    if mask is None:
        return
    mask = mask.to(scores.device)
    if mask.dtype == torch.bool:
        scores.masked_fill_(~mask, NEG_INF)
    else:
        scores.add_(mask.float())


def masked_scores(query, key, scale: float, softcap: float | None = None, *, qpos: torch.Tensor,
                  kpos: torch.Tensor, window: int | None = None, mask: torch.Tensor | None = None,
                  blocked: torch.Tensor | None = None, upcast: bool = False) -> torch.Tensor:
    """float32 ``[b, H, r, T]``: ``logits`` with what the backend masks set to -inf (or
    added): ``blocked_by_position(qpos, kpos, window)``, the backend's ``mask`` for these
    rows (``backend_mask``) and ``blocked``, bool broadcastable to ``[b, H, r, T]`` (True =
    hidden: an intervention's per-head key mask). All masking is in place on the scores."""
    scores = logits(query, key, scale, softcap, upcast)
    scores.masked_fill_(blocked_by_position(qpos, kpos, window), NEG_INF)
    apply_mask(scores, mask)
    if blocked is not None:
        scores.masked_fill_(blocked, NEG_INF)
    return scores


def probabilities(scores: torch.Tensor, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """float32 softmax over keys of ``scores [b, H, r, T]``; ``sinks [H]`` (attention sinks,
    GPT-OSS) are per-head logits that take softmax mass but have no value (dropped after)."""
    if sinks is None:
        return torch.softmax(scores, dim=-1)
    b, num_heads, r, _ = scores.shape
    sink = sinks.float().reshape(1, num_heads, 1, 1).expand(b, -1, r, 1).to(scores.device)
    return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]


def output(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``probs [b, H, r, T]`` @ ``value [b, KV, T, d]`` in the value's dtype, as the
    backends return it: ``[b, r, H, d]``."""
    b, num_heads, r, kv_len = probs.shape
    kv_heads, d = value.shape[1], value.shape[-1]
    out = torch.matmul(probs.reshape(b, kv_heads, num_heads // kv_heads * r, kv_len).to(value.dtype), value)
    return out.reshape(b, num_heads, r, d).transpose(1, 2)


@dataclass
class Step:
    """A decode step computed here: the masked float32 ``scores`` and ``probs``
    ``[b, H, 1, T]``, and the ``out``put ``[b, 1, H, d]``."""

    scores: torch.Tensor
    probs: torch.Tensor
    out: torch.Tensor


def decode_step(call: Call, blocked: torch.Tensor | None = None) -> Step:
    """One single-token call from a float32 score row per query head, masked as the
    backend masks it and by ``blocked`` (bool ``[b or 1, H or 1, 1, T]``, True = hidden).
    The query is the last key, so the window keeps keys with ``T - 1 - j < window``."""
    scores = masked_scores(call.query, call.key, call.scale, call.softcap, qpos=call.qpos(), kpos=call.kpos(),
                           window=call.window, mask=backend_mask(call.mask, slice(-1, None), call.key.shape[2]),
                           blocked=blocked)
    probs = probabilities(scores, call.sinks)
    return Step(scores, probs, output(probs, call.value))


def attend_grouped(call: Call, allowed: torch.Tensor | None, causal: bool = False) -> torch.Tensor:
    """Output ``[b, q, H, d]`` of every query head of the call against its grouped keys
    ``[b, KV, T, d]`` (no key copied per query head) under one bool mask ``allowed``
    (``[b or 1, 1 or KV or H, q, T]``, True = may attend: shared, per KV head, per query head;
    None: every key, or with ``causal`` the causal order of a call whose queries are all its
    keys): sdpa where it can, the float32 path where it cannot (logit softcap, sink logits)."""
    b, num_heads, q, d = call.query.shape
    kv = call.key.shape[1]
    per_kv = allowed is not None and allowed.shape[1] == kv and kv not in (1, num_heads)  # grouped: expand it
    if call.softcap is None and call.sinks is None:
        if q == 1 and (allowed is None or allowed.shape[1] == 1 or per_kv):  # a KV head's query heads as rows
            # of one head (as ``logits`` does): 2-3x faster on CPU; a per-query-head mask cannot be shared that way
            rows = None if allowed is None else allowed.reshape(allowed.shape[0], allowed.shape[1], 1, -1)
            out = F.scaled_dot_product_attention(call.query.reshape(b, kv, num_heads // kv, d), call.key, call.value,
                                                 attn_mask=rows, scale=call.scale)
            return out.reshape(b, num_heads, q, d).transpose(1, 2)
        if per_kv:
            allowed = allowed.repeat_interleave(num_heads // kv, dim=1)
        return F.scaled_dot_product_attention(call.query, call.key, call.value, attn_mask=allowed, scale=call.scale,
                                              is_causal=causal and allowed is None, enable_gqa=True).transpose(1, 2)
    if per_kv:
        allowed = allowed.repeat_interleave(num_heads // kv, dim=1)
    scores = logits(call.query, call.key, call.scale, call.softcap, upcast=True)
    if allowed is not None:
        scores.masked_fill_(~allowed, NEG_INF)
    elif causal:
        scores.masked_fill_(blocked_by_position(call.qpos(), call.kpos(), None), NEG_INF)
    # A row that may see no key (a left pad) outputs 0, as sdpa does: a NaN there would reach
    # the pads' keys and values of the next layer, and 0 * NaN every row that hides them.
    return output(probabilities(scores, call.sinks).nan_to_num_(0.0), call.value)


def attend_heads(call: Call, heads: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Output ``[b, q, n, d]`` of query heads ``heads`` (long ``[n]``) of a multi-token call
    under one bool mask ``allowed`` (``[b or 1, 1 or n, q, T]``, True = may attend). Only
    these heads are computed (their keys gathered per head), by ``attend_grouped``."""
    kv_idx = heads // (call.query.shape[1] // call.key.shape[1])
    sub = call.replace(query=call.query[:, heads], key=call.key[:, kv_idx], value=call.value[:, kv_idx],
                       sinks=None if call.sinks is None else call.sinks[heads])
    return attend_grouped(sub, allowed)

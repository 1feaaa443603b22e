"""Streaming heads: a head that attends only to the first ``sink`` and the last ``recent``
keys (DuoAttention's streaming heads, StreamingLLM's sink + window), and how much of the
KV cache that saves.

``attention.HeadMask(heads, mode="stream", phase, sink, recent)`` selects the heads; the
scoped attention function uses the two functions here:

- ``stream_keys``: at a decode step, the keys a streamed head sees;
- ``streamed_prefill``: a phase-``all`` prefill, where the streamed heads are recomputed as
  one group under one shared ``[query, key]`` mask (causal, sink + recent, the layer's
  window), never a per-head mask over the whole prompt (a chunked prefill bounds it).

Both are exact: the same as eager attention under the explicit per-head mask
(tests/test_streaming.py). The cache itself is not cut (kvpress's DuoAttentionPress also
masks): ``kv_kept`` says exactly what a compressed cache would hold.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F

from ..models.shape import ModelShape


def stream_keys(kv_len: int, sink: int, recent: int, prefill_len: int | None, device=None) -> torch.Tensor:
    """bool ``[kv_len]``: the keys a streamed head sees at a decode step (the query is the
    last key). ``prefill_len`` None (phase ``all``): the first ``sink`` and the last
    ``recent`` keys. Else (phase ``decode``): the prompt's cache was compressed to its
    first ``sink`` and last ``recent`` of ``prefill_len`` keys; every key since is kept.

    >>> stream_keys(10, 2, 3, None).nonzero().flatten().tolist()
    [0, 1, 7, 8, 9]
    >>> stream_keys(10, 2, 3, 6).nonzero().flatten().tolist()
    [0, 1, 3, 4, 5, 6, 7, 8, 9]
    """
    j = torch.arange(kv_len, device=device)
    tail = kv_len - recent if prefill_len is None else prefill_len - recent
    return (j < sink) | (j >= tail)


def _as_bool(attention_mask: torch.Tensor, q: int, kv_len: int) -> torch.Tensor:
    """The backend's mask as bool ``[b or 1, 1, q, kv_len]`` (True = may attend)."""
    if attention_mask.ndim == 2:  # flash: [b, kv] padding, nonzero = a real token
        return attention_mask[:, -kv_len:].bool()[:, None, None, :]
    m = attention_mask[..., -q:, -kv_len:]
    return m if m.dtype == torch.bool else m == 0  # additive masks: 0 where allowed


def streamed_prefill(query, key, value, out, stream, sink: int, recent: int, window: int | None, attention_mask,
                     scaling, softcap=None, sinks=None) -> torch.Tensor:
    """``out`` [b, q, H, d] (the backend's output of all heads) with the streamed heads'
    rows replaced by their sink + recent attention.

    query [b, H, q, d]; key/value [b, KV, T, d] (the query's keys are the last q);
    stream bool [b or 1, H]. Only the streamed heads are computed, as one group.
    """
    idx = stream.any(0).nonzero().flatten()
    if len(idx) == 0:
        return out
    b, num_heads, q, d = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    qpos = torch.arange(kv_len - q, kv_len, device=query.device)[:, None]
    kpos = torch.arange(kv_len, device=query.device)[None, :]
    # [q, T] bool, shared by the group; compared against [q, 1] bounds, so no [q, T] integer temporary
    allowed = (kpos <= qpos) & ((kpos < sink) | (kpos > qpos - recent))
    if window is not None:
        allowed &= kpos > qpos - window
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & _as_bool(attention_mask, q, kv_len)
    kv_idx = idx // (num_heads // kv_heads)
    qs, ks, vs = query[:, idx], key[:, kv_idx], value[:, kv_idx]  # [b, n, q or T, d]
    scale = scaling if scaling is not None else d**-0.5
    if softcap is None and sinks is None:
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed, scale=scale)
    else:  # what sdpa cannot do: logit softcap (Gemma2), sink logits (GPT-OSS)
        sc = torch.matmul(qs.float(), ks.float().transpose(-1, -2)) * scale
        if softcap is not None:
            sc = torch.tanh(sc / softcap) * softcap
        sc = sc.masked_fill(~allowed, float("-inf"))
        if sinks is not None:
            s = sinks[idx].float().reshape(1, -1, 1, 1).expand(sc.shape[0], -1, q, 1)
            probs = torch.softmax(torch.cat([sc, s], dim=-1), dim=-1)[..., :-1]
        else:
            probs = torch.softmax(sc, dim=-1)
        o = torch.matmul(probs.to(vs.dtype), vs)
    o = o.transpose(1, 2).to(out.dtype)  # [b, q, n, d]
    sel = stream[:, idx].reshape(stream.shape[0], 1, len(idx), 1)
    out = out.clone()
    out[:, :, idx] = torch.where(sel, o, out[:, :, idx])
    return out


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

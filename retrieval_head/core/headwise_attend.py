"""Attention over a head-wise cache's split keys, and ``generate`` with such a cache.

A ``headwise.HeadwiseCache`` layer with streamed heads hands the attention function a
``SplitKV``: the full KV heads' keys ``[b, n_full, T, d]`` and the streamed heads' ``[b,
n_stream, S, d]`` at positions ``pos``. No backend takes that, so ``HeadwiseAttention`` (a
``hook.Hook`` whose ``attends`` computes the whole call) does, inside an ``intervene`` scope:
each group once, with ``attend.attend_grouped`` (sdpa, or the float32 path under a softcap or
sink logits), the outputs written back in query-head order. One mask is built for the
layer's logical length (``HeadwiseLayer.get_mask_sizes``); the full group reads it whole,
the streamed group the columns of the positions it holds, and-ed with causal order, the
layer's window and the streaming rule (``stream.stream_keep``): exactly the keys the
masked simulation lets each row see. A keep set of query heads can stream some query heads
of a full KV head: those are recomputed after the full group against its keys under the
same rule (``mixed_output``, ``attend.attend_heads``).

A ``pressed.PressedCache`` layer hands it a ``PressedKV`` (``pressed_output``): before its
compression point every key, run through the press's own simulation around the backend
(``intervene.through``, then the layer compressed); after it, one ``attend_grouped`` per group
of KV heads over the keys the group holds, a per-KV-head mask from their positions.

Worked example (a notebook; ``generate`` is ``retrieval_head.headwise_generate``)::

    keep = keep_top(head_scores, shape.group, fraction=0.25)          # [layers, kv_heads]
    cache = HeadwiseCache(shape, keep, sink=4, recent=64, phase="decode")
    out = generate(model, cache, input_ids=ids, attention_mask=am, max_new_tokens=32)

    cache = HeadwiseCache(shape, keep, sink=4, recent=64)             # or model.generate itself:
    cache.pad_left(am)                                                # each row's left padding
    with intervene(model, hooks=[HeadwiseAttention()]):
        out = model.generate(input_ids=ids, attention_mask=am, cache=cache, max_new_tokens=32)
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .attend import Call, as_allowed, attend_grouped, attend_heads, backend_mask, blocked_by_position
from .cachebase import CompressedCache
from .headwise import HeadwiseCache, SplitKV, query_heads  # noqa: F401 (query_heads: the API)
from .hook import Hook
from .intervene import intervene, through
from .pressed import Group, PressedKV
from .stream import stream_keep


def group_call(call: Call, heads: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> Call:
    """The call of query heads ``heads`` (whole groups, in order) on their group's own keys
    ``[b, kv, S, d]``: query head ``i`` of it reads KV head ``i // group`` of ``key``."""
    return call.replace(query=call.query[:, heads], key=key, value=value,
                        sinks=None if call.sinks is None else call.sinks[heads.to(call.sinks.device)])


def group_output(call: Call, heads: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 allowed: torch.Tensor | None, causal: bool = False) -> torch.Tensor:
    """``[b, q, n, d]``: query heads ``heads`` (whole groups, in order) against their group's
    own keys ``[b, kv, S, d]`` under ``allowed`` (bool ``[b or 1, 1, q, S]``), by
    ``attend.attend_grouped`` (the keys are never copied per query head)."""
    return attend_grouped(group_call(call, heads, key, value), allowed, causal)


def stream_sees(call: Call, split: SplitKV, qpos: torch.Tensor, kpos: torch.Tensor,
                m: torch.Tensor | None) -> torch.Tensor:
    """bool ``[b or 1, 1, q, S]``: the keys at ``kpos`` (``[S]``, or per row ``[b, S]``: a
    streamed head's under left padding) a streamed query row at ``qpos [q]`` sees: causal
    order, the layer's window, the streaming rule (``stream.stream_keep``, each row's sink at
    its ``split.start``) and the backend's mask ``m`` (bool ``[b or 1, 1, q or 1, length]``,
    its columns at ``kpos``)."""
    at = None if split.at is None else torch.tensor([split.at], device=qpos.device)
    keep = stream_keep(qpos, kpos, split.sink, split.recent, at, split.start)
    sees = ~blocked_by_position(qpos, kpos, call.window) & keep
    sees = sees[None, None] if sees.ndim == 2 else sees  # [q, S] or [b or 1, 1, q, S]
    if m is None:
        return sees
    if kpos.ndim == 1:
        return sees & m.index_select(-1, kpos)
    b, rows = kpos.shape[0], m.shape[2]
    return sees & m.expand(b, -1, -1, -1).gather(-1, kpos[:, None, None, :].expand(b, 1, rows, kpos.shape[-1]))


def mixed_output(call: Call, split: SplitKV, values: SplitKV, qpos: torch.Tensor, m: torch.Tensor | None,
                 out: torch.Tensor) -> None:
    """In place on ``out [b, q, H, d]``: the query heads that stream on a full KV head (a keep
    set of query heads splitting a KV head, ``split.mixed``) recomputed against that head's
    full keys under the streaming rule over positions ``arange(length)``, as the masked
    simulation (``stream.StreamHeads``) does: their KV head's keys are held for its kept
    query heads, but these may see only their sink and recent keys."""
    if not len(split.mixed) or (split.at is not None and split.length <= split.at):
        return  # none here, or every row precedes the compression: they saw what their group saw
    sees = stream_sees(call, split, qpos, torch.arange(split.length, device=qpos.device), m)
    o = attend_heads(group_call(call, split.full_q, split.full, values.full), split.mixed, sees)
    out[:, :, split.full_q[split.mixed]] = o.to(out.dtype)


def split_output(call: Call) -> torch.Tensor:
    """A head-wise layer's call (keys and values ``SplitKV``): its full group, its streamed
    query heads on full KV heads (``mixed_output``), its streamed group."""
    split, values = call.key, call.value
    query = call.query
    b, num_heads, q, d = query.shape
    length, dev = split.length, query.device
    qpos = torch.arange(length - q, length, device=dev)
    m = backend_mask(call.mask, slice(-q, None), length)  # [b or 1, 1, q or 1, length]
    m = None if m is None else as_allowed(m).to(dev)
    out = query.new_empty(b, q, num_heads, values.stream.shape[-1])
    if split.full is not None:
        # Without padding or window, a decode step sees every key and a fresh prefill is causal: no mask
        plain = m is None and call.window is None and q in (1, length)
        allowed = None
        if not plain:
            allowed = ~blocked_by_position(qpos, torch.arange(length, device=dev), call.window)[None, None]
            allowed = allowed if m is None else allowed & m
        heads = split.full_q
        out[:, :, heads] = group_output(call, heads, split.full, values.full, allowed, causal=q > 1).to(out.dtype)
        mixed_output(call, split, values, qpos, m, out)
    if not len(split.stream_q):
        return out  # every KV head full, some of their query heads streamed (mixed_output)
    sees = stream_sees(call, split, qpos, split.pos, m)
    heads = split.stream_q
    out[:, :, heads] = group_output(call, heads, split.stream, values.stream, sees).to(out.dtype)
    return out


def held_sees(call: Call, group: Group, qpos: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """bool ``[b, n, q, P]``: the compressed keys of a pressed layer's ``group`` (at
    ``group.pos``) each query row sees: its kept ones (``valid``) within the layer's window and
    the backend's mask ``m`` (``[b or 1, 1, q or 1, length]``, its columns at their positions)."""
    pos = group.pos
    sees = group.valid[:, :, None, :] & ~blocked_by_position(qpos, pos, call.window)  # [b, n, q, P]
    if m is None:
        return sees
    b, n, rows, held = *pos.shape[:2], m.shape[2], pos.shape[-1]
    return sees & m.expand(b, n, rows, -1).gather(-1, pos[:, :, None, :].expand(b, n, rows, held))


def pressed_output(call: Call, backend) -> torch.Tensor:
    """A pressed layer's call (keys and values ``PressedKV``). Before its compression: every
    key, through the press's own simulation (``intervene.through``: the backend, the rows from
    the point on recomputed with the dropped keys hidden), the layer compressed right after the
    call that reaches its last point. After: each group of KV heads over what it holds (its
    compressed keys, then every key since), one ``attend_grouped`` per group."""
    keys, values = call.key, call.value
    layer = keys.layer
    if layer.groups is None:
        plain = call.replace(key=keys.parts[0], value=values.parts[0])
        out, _ = through((layer.simulation,), plain, backend)
        if layer.simulation.compressed(layer.index):
            layer.compress()
        return out
    b, num_heads, q, _ = call.query.shape
    length, dev = layer.length, call.query.device
    qpos = torch.arange(length - q, length, device=dev)
    m = backend_mask(call.mask, slice(-q, None), length)
    m = None if m is None else as_allowed(m).to(dev)
    since = ~blocked_by_position(qpos, torch.arange(layer.since, length, device=dev), call.window)[None, None]
    since = since if m is None else since & m[..., layer.since:]  # [b or 1, 1, q, t]: the keys since
    out = call.query.new_empty(b, q, num_heads, values.parts[0].shape[-1])
    for group, k, v in zip(layer.groups, keys.parts, values.parts):
        held = held_sees(call, group, qpos, m)
        allowed = torch.cat([held, since.expand(b, held.shape[1], -1, -1)], dim=-1)
        out[:, :, group.q_heads] = group_output(call, group.q_heads, k, v, allowed).to(out.dtype)
    return out


class HeadwiseAttention(Hook):
    """Computes every call whose keys a head-wise cache (``SplitKV``) or a pressed cache
    (``PressedKV``) wrapped; others go the usual way."""

    def attends(self, call: Call, backend) -> torch.Tensor | None:
        if isinstance(call.key, SplitKV):
            return split_output(call)
        if isinstance(call.key, PressedKV):
            return pressed_output(call, backend)
        return None


REFUSED_GENERATE = {
    "num_beams": "beam search (num_beams > 1) reorders rows",
    "assistant_model": "assisted decoding crops the cache back",
    "prompt_lookup_num_tokens": "prompt-lookup decoding crops the cache back",
    "cache_implementation": "a cache_implementation replaces the head-wise cache",
}
CALL = "retrieval_head.headwise_generate(model, cache, ...)"


def check_generate(model, kwargs: dict) -> int:
    """Refuse, before any work, what a head-wise cache cannot do (one line, ``UserError``);
    the number of sequences returned per prompt (``num_return_sequences``)."""
    config = kwargs.get("generation_config") or model.generation_config
    setting = {name: kwargs.get(name, getattr(config, name, None))
               for name in (*REFUSED_GENERATE, "num_return_sequences")}
    for name, why in REFUSED_GENERATE.items():
        value = setting[name]
        if value is not None and (name != "num_beams" or int(value) > 1):
            raise UserError(f"a head-wise cache cannot be used with {name}={value!r}: {why}")
    return int(setting["num_return_sequences"] or 1)


def generate(model, cache: CompressedCache, **kwargs):
    """``model.generate(**kwargs)`` on ``cache`` with the head-wise attention in scope (the
    model left exactly as before); unsupported settings refused first. A fresh cache is told
    where the prompt ends (phase decode) and each row's left padding (``pad_left``, the rows
    ``num_return_sequences`` makes included): what ``model.generate`` on it inside
    ``intervene(model, hooks=[HeadwiseAttention()])`` leaves to the caller."""
    if not isinstance(cache, CompressedCache):
        raise UserError(f"{CALL} takes a retrieval_head.HeadwiseCache or PressedCache, not a {type(cache).__name__}")
    copies = check_generate(model, kwargs)
    prompt = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    if copies > 1 and cache.get_seq_length():
        raise UserError("num_return_sequences > 1 needs a fresh head-wise cache: generate repeats the prompt's "
                        "rows before the prefill, and a filled cache's rows cannot be repeated")
    if prompt is not None and not cache.get_seq_length():
        if cache.phase == "decode":
            cache.compress_at(prompt.shape[1])  # after the whole prefill, chunked or not
        if kwargs.get("attention_mask") is not None:  # each row's sink: its own first tokens
            cache.pad_left(kwargs["attention_mask"].repeat_interleave(copies, dim=0))
    with intervene(model, hooks=[HeadwiseAttention()]):
        return model.generate(cache=cache, **kwargs)

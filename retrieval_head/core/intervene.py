"""Scoped interventions on attention through transformers' ``AttentionInterface``.

No modeling file is copied. Inside ``intervene(model, probe=..., mask=...)`` the model's
``config._attn_implementation`` names a function registered just for that scope; it sees
``module.layer_idx``, the query and the cached keys of every attention call, and
delegates to the backend the model had before (sdpa, eager, flash...). On exit the
registrations are removed and the config restored, so the model is exactly as before.

Worked example (a notebook)::

    probe = ArgmaxProbe()
    with intervene(model, probe=probe):
        out = model(input_ids=last_token, cache=cache)          # one decode step
    probe.positions(cache.get_seq_length() - 1, num_layers)     # [layers, batch, heads]

    heads = torch.zeros(L, H, dtype=torch.bool); heads[12, 3] = True
    with intervene(model, mask=HeadMask(heads, mode="uniform", phase="decode")):
        model.generate(...)

A *decode step* is an attention call whose query is a single token: that is where the
probe scores and where ``phase="decode"`` masks act. The probe computes that step itself
(one float32 score row per head), honouring what the backend would: the mask the
implementation's mask function built (4-D bool or additive for eager/sdpa; for flash
``None``, or the 2-D ``[batch, kv_len]`` padding mask) and the layer's sliding window, taken
from the call's ``sliding_window`` kwarg (or the module's attribute when the modeling file
passes none), because flash's mask carries no window and our caches may keep every key of
a sliding layer (prefix reuse, stacked rows). The query is the last cached key, so the
window keeps keys ``j`` with ``kv_len - 1 - j < window`` (transformers' ``q - kv < window``).

Every other call goes to the delegate with ``module.config._attn_implementation`` reading
the delegate's name for the duration of the call: transformers' flash integration looks its
kernel up by that name, and would not find one under the scope's name.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from ..errors import UnsupportedModelError
from ..models.shape import ModelShape
from .stream import stream_keys, streamed_prefill
from .tap import AttentionTap, span_mass

MASK_MODES = ("uniform", "zero")  # the ablations (--mask_mode)
HEAD_MODES = MASK_MODES + ("stream",)  # and streaming heads (--keep_full)
MASK_PHASES = ("decode", "all")
# transformers' fallback when config._attn_implementation == "eager" is the modeling file's
# own eager function, which is not in the registry; ours computes the same thing.
_EAGER = "eager"


@dataclass(frozen=True)
class HeadMask:
    """Which query heads to ablate (or stream), and how.

    heads: bool ``[layers, heads]``; True = ablated. ``[batch, layers, heads]`` gives each
           batch row its own heads (several conditions decoded as one batch).
    mode:  ``uniform`` zeroes the head's query, so it attends uniformly over the (causal,
           windowed) prefix and outputs the mean of the values (the original's ablation);
           ``zero`` zeroes the head's output before ``o_proj``;
           ``stream`` lets the head attend only to the first ``sink`` and the last
           ``recent`` keys (DuoAttention's streaming heads; see ``stream_keys``).
    phase: ``decode`` acts only on single-token (decode) calls, as the original (for
           ``stream``: the prompt's cache compressed once after the prefill, as kvpress's
           presses do); ``all`` acts on the prefill too (``stream``: as if the head's cache
           had been compressed from the first token, DuoAttention).
    """

    heads: torch.Tensor
    mode: str = "uniform"
    phase: str = "decode"
    sink: int = 0  # stream: the first keys every streamed head keeps
    recent: int = 0  # stream: and the last ones (the query itself included)

    def __post_init__(self):
        if self.mode not in HEAD_MODES:
            raise ValueError(f"mask mode must be one of {HEAD_MODES}, got {self.mode!r}")
        if self.phase not in MASK_PHASES:
            raise ValueError(f"mask phase must be one of {MASK_PHASES}, got {self.phase!r}")
        if self.heads.dtype != torch.bool or self.heads.ndim not in (2, 3):
            raise ValueError("HeadMask.heads must be a bool [layers, heads] (or [batch, layers, heads]) tensor")
        if self.mode == "stream" and (self.sink < 0 or self.recent < 1):
            raise ValueError("streaming needs sink >= 0 and recent >= 1 (the query sees itself)")

    def describe(self) -> dict:
        """JSON-ready record of the intervention (heads as [layer, head] pairs)."""
        d = {"heads": self.heads.nonzero().tolist(), "mode": self.mode, "phase": self.phase}
        if self.mode == "stream":
            d.update(sink=self.sink, recent=self.recent)
        return d

    def kind(self) -> tuple:
        """What rows must share to be decoded as one batch (their heads may differ)."""
        return (self.mode, self.phase, self.sink, self.recent)


class ArgmaxProbe:
    """Records, per decode step, each query head's argmax key position.

    Positions are stored relative to the end of that layer's cache (``j - kv_len``, in
    ``[-kv_len, -1]``), so sliding-window layers whose cache holds only the last W keys
    map to the same absolute positions as full layers: ``abs = query_position + 1 + rel``.
    The argmax is taken over float32 scores (pre-softmax logits, masked, softcapped),
    which orders keys exactly as the attention weights do.
    """

    def __init__(self, spans: torch.Tensor | None = None):
        self.rel: dict[int, torch.Tensor] = {}  # layer_idx -> [batch, heads] long
        # spans: long [batch, 2], each row's key span (the needle); the probe then also keeps
        # each head's softmax mass on it (needle-mass), from the same float32 row.
        self.spans = spans
        self.mass: dict[int, torch.Tensor] = {}  # layer_idx -> [batch, heads] float

    def clear(self) -> None:
        self.rel = {}
        self.mass = {}

    def masses(self, num_layers: int) -> torch.Tensor:
        """float ``[layers, batch, heads]``: the last step's mass on each row's span."""
        return torch.stack([self.mass[i].float().cpu() for i in range(num_layers)])

    def positions(self, query_position: int | torch.Tensor, num_layers: int) -> torch.Tensor:
        """Absolute argmax positions ``[layers, batch, heads]`` of the last decode step.

        query_position: absolute position of the step's query token (scalar, or [batch]).
        Raises UnsupportedModelError when a layer never reached the interface.
        """
        missing = [i for i in range(num_layers) if i not in self.rel]
        if missing:
            raise UnsupportedModelError(
                f"layers {missing[:5]}{'...' if len(missing) > 5 else ''} never called the attention interface"
            )
        device = self.rel[0].device
        rel = torch.stack([self.rel[i].to(device) for i in range(num_layers)])
        qp = torch.as_tensor(query_position, device=device).reshape(1, -1, 1)
        return rel + qp + 1


def _delegate_for(name: str) -> Callable | None:
    """The attention function behind an implementation name (None = modeling file's eager)."""
    if name is None or name == _EAGER:
        return None
    return ALL_ATTENTION_FUNCTIONS[name]


def _scores_fp32(q: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """q [b, KV, g, d] @ key [b, KV, T, d]^T in float32 without copying the cache to fp32
    where the device can (CUDA half-precision matmul with fp32 output); a bf16 score row
    would round near-ties together and make the argmax arbitrary."""
    if q.dtype == torch.float32:
        return torch.matmul(q, key.transpose(-1, -2))
    if q.is_cuda:
        b, kv, g, d = q.shape
        try:
            out = torch.bmm(q.reshape(b * kv, g, d), key.reshape(b * kv, -1, d).transpose(1, 2),
                            out_dtype=torch.float32)
            return out.reshape(b, kv, g, -1)
        except (RuntimeError, TypeError):  # older torch: no out_dtype
            pass
    return torch.matmul(q.float(), key.float().transpose(-1, -2))


def _layer_window(module, kwargs: dict) -> int | None:
    """The layer's sliding window (None = full attention): the ``sliding_window`` the
    modeling file passes to the attention call, which flash honours (None there is a full
    layer even where the module has the attribute, e.g. EXAONE 4); without that kwarg, the
    module's ``sliding_window`` attribute (Qwen2-MoE sets it and windows by the mask only)."""
    window = kwargs["sliding_window"] if "sliding_window" in kwargs else getattr(module, "sliding_window", None)
    return None if window is None else int(window)


def _probe_attention(module, query, key, value, attention_mask, scaling, softcap, sinks=None, window=None,
                     drop: tuple[torch.Tensor, torch.Tensor] | None = None, spans: torch.Tensor | None = None):
    """One decode step's attention from a single float32 score row per query head.

    query [b, H, 1, d]; key/value [b, KV, T, d] (GQA grouped, the cache is not copied
    per head). attention_mask: None, a 2-D ``[b or 1, >= T]`` padding mask (flash: nonzero
    = a real token, its last T columns are the cached keys), or a 4-D bool/additive mask.
    window: the layer's sliding window (see ``_layer_window``); the query is the last key.
    drop: ``(heads [b or 1, H] bool, keep [T] bool)``: the streamed heads see only ``keep``.
    spans: long ``[b, 2]`` key spans (absolute; the cache holds every key): also return each
    head's float32 softmax mass on its row's span (``tap.span_mass``), else None.
    Returns output [b, 1, H, d] (the layout backends return), the argmax relative to
    the end of the cache [b, H], and the span mass. Masking is in place on the score row (nothing else of
    its size is allocated before the softmax).
    """
    b, num_heads, _, d = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = num_heads // kv_heads
    scores = _scores_fp32(query.reshape(b, kv_heads, group, d), key)  # [b, KV, g, T], a new tensor
    scores.mul_(scaling if scaling is not None else d**-0.5)
    if softcap is not None:
        scores.div_(softcap).tanh_().mul_(softcap)
    if window is not None and kv_len > window:
        scores[..., : kv_len - window] = float("-inf")  # keys with kv_len - 1 - j >= window
    if attention_mask is not None:
        if attention_mask.ndim == 2:
            if attention_mask.shape[-1] < kv_len:
                raise UnsupportedModelError(
                    f"a 2-D attention mask of {attention_mask.shape[-1]} columns for {kv_len} cached keys "
                    "(a static cache?) cannot be probed"
                )
            keep = attention_mask[:, -kv_len:].bool().reshape(-1, 1, 1, kv_len)
            scores.masked_fill_(~keep, float("-inf"))
        else:
            m = attention_mask[..., -1:, -kv_len:].reshape(b if attention_mask.shape[0] == b else 1, 1, 1, kv_len)
            if m.dtype == torch.bool:
                scores.masked_fill_(~m, float("-inf"))
            else:
                scores.add_(m.float())
    if drop is not None:  # streamed heads: only their sink and recent keys (one bool row per head)
        heads, keep = drop
        scores.masked_fill_(heads.reshape(-1, kv_heads, group, 1) & ~keep.reshape(1, 1, 1, kv_len), float("-inf"))
    argmax = scores.argmax(dim=-1).reshape(b, num_heads) - kv_len
    if sinks is not None:
        # Attention sinks (``s_aux``, GPT-OSS): a per-head logit that takes softmax mass but
        # has no value; it never wins the argmax, which is over keys only.
        sink = sinks.float().reshape(1, kv_heads, group, 1).expand(b, -1, -1, -1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    mass = span_mass(probs, spans) if spans is not None else None
    out = torch.matmul(probs.to(value.dtype), value)  # [b, KV, g, d]
    return out.reshape(b, 1, num_heads, value.shape[-1]), argmax, mass


class Scope:
    """What an ``intervene`` block yields: which layers the function actually saw."""

    def __init__(self, model):
        self.model_class = type(model).__name__
        self.layers_seen: set[int] = set()

    def check_routed(self) -> None:
        """Refuse, by class name, a model whose attention never reached the interface."""
        if not self.layers_seen:
            raise UnsupportedModelError(
                f"{self.model_class} does not call transformers' attention interface "
                "(its attention was never routed through it), so it cannot be probed or masked"
            )


def _make_attention(delegate: Callable | None, probe: ArgmaxProbe | None, mask: HeadMask | None, scope: Scope,
                    name: str | None = None, delegate_name: str | None = None, taps: tuple[AttentionTap, ...] = ()):
    """Build the scope's attention function (a closure: the scope's state lives here only).

    name / delegate_name: the scope's registered name and the backend it delegates to; a
    module whose config reads ``name`` is shown ``delegate_name`` while the delegate runs."""
    per_layer: dict[tuple[int, torch.device], torch.Tensor] = {}
    prefill_at: dict[int, int] = {}  # stream, phase decode: each layer's prefill length

    def heads_of(layer: int, device: torch.device) -> torch.Tensor:
        # Cached per (layer, device) so a decode step moves nothing to the device.
        k = (layer, device)
        if k not in per_layer:
            per_layer[k] = mask.heads[..., layer, :].reshape(-1, mask.heads.shape[-1]).to(device)  # [1 or b, H]
        return per_layer[k]

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise UnsupportedModelError(f"{type(module).__name__} has no layer_idx; cannot tell its layer")
        scope.layers_seen.add(layer)
        decode = query.shape[2] == 1
        ablate = None
        if mask is not None and (decode or mask.phase == "all"):
            ablate = heads_of(layer, query.device)
            if mask.mode == "uniform":
                query = query.masked_fill(ablate[:, :, None, None], 0.0)
        stream = ablate if mask is not None and mask.mode == "stream" else None
        window = _layer_window(module, kwargs)
        weights = None
        if decode and (probe is not None or stream is not None):
            # One score row per head, computed here: the probe's argmax, and the streamed heads' keys.
            drop = None if stream is None else (stream, stream_keys(
                key.shape[2], mask.sink, mask.recent, None if mask.phase == "all" else prefill_len(layer, key.shape[2]),
                key.device))
            spans = probe.spans if probe is not None else None
            out, rel, mass = _probe_attention(module, query, key, value, attention_mask, scaling,
                                              kwargs.get("softcap"), kwargs.get("s_aux"), window, drop, spans)
            if probe is not None:
                probe.rel[layer] = rel
                if mass is not None:
                    probe.mass[layer] = mass
        else:
            for tap in taps:  # the tapped rows' mass, from the query the backend gets (masked or not)
                tap.observe(layer, query, key, attention_mask, scaling, kwargs.get("softcap"), kwargs.get("s_aux"),
                            window)
            out, weights = delegated(module, query, key, value, attention_mask, scaling, dropout, kwargs)
            if stream is not None:  # a phase-all prefill: the streamed heads recomputed as one group
                out = streamed_prefill(query, key, value, out, stream, mask.sink, mask.recent, window, attention_mask,
                                       scaling, kwargs.get("softcap"), kwargs.get("s_aux"))
        if ablate is not None and mask.mode == "zero":
            out = out.masked_fill(ablate[:, None, :, None], 0.0)  # out: [b, q, H, d]
        return out, weights

    def delegated(module, query, key, value, attention_mask, scaling, dropout, kwargs):
        fn = delegate or _modeling_eager(module)
        cfg = getattr(module, "config", None)
        swap = name is not None and delegate_name is not None and getattr(cfg, "_attn_implementation", None) == name
        if swap:  # flash_attention_forward loads its kernel by module.config._attn_implementation
            cfg._attn_implementation = delegate_name
        try:
            return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        finally:
            if swap:
                cfg._attn_implementation = name

    def prefill_len(layer: int, kv_len: int) -> int:
        # Phase decode: the cache as the first decode step of this scope found it (its query
        # is the last key), i.e. the prompt's prefill, compressed once.
        return prefill_at.setdefault(layer, kv_len - 1)

    return attention


def _modeling_eager(module) -> Callable:
    """The eager attention function of the module's own modeling file (what 'eager' runs)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise UnsupportedModelError(f"{type(module).__name__} has no eager_attention_forward to delegate to")
    return fn


def _configs(model) -> list:
    """The config objects whose _attn_implementation the model's layers read."""
    cfgs = [model.config]
    for name in getattr(model.config, "sub_configs", {}) or {}:
        sub = getattr(model.config, name, None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            cfgs.append(sub)
    return cfgs


@contextlib.contextmanager
def intervene(model, probe: ArgmaxProbe | None = None, mask: HeadMask | None = None,
              tap: AttentionTap | list[AttentionTap] | None = None) -> Iterator[Scope]:
    """Route every attention call of ``model`` through a probe and/or a head mask, and/or
    attention taps (``tap.AttentionTap``: rows of the calls that are not probed decode steps).

    Active only inside the ``with`` block; the model is left exactly as it was.
    Nesting is refused: pass the probe and the mask to one ``intervene``.
    """
    if mask is not None:
        expected = ModelShape.from_config(model.config).grid
        if tuple(mask.heads.shape[-2:]) != expected:
            raise ValueError(f"mask is {tuple(mask.heads.shape)}, model has [layers, heads] = {expected}")
    current = model.config._attn_implementation
    if current is not None and current.startswith("retrieval_head_"):
        raise RuntimeError("already inside an intervene() scope on this model; pass probe and mask together")
    delegate_name = current or "sdpa"
    delegate = _delegate_for(delegate_name)
    name = f"retrieval_head_{delegate_name}_{uuid.uuid4().hex[:8]}"
    mask_fn = ALL_MASK_ATTENTION_FUNCTIONS[delegate_name]
    # Both registries must know the name: without the mask entry transformers silently
    # builds no mask at all (sliding windows and padding would be ignored).
    scope = Scope(model)
    AttentionInterface.register(name, _make_attention(delegate, probe, mask, scope, name, delegate_name,
                                                     tuple(tap) if isinstance(tap, (list, tuple)) else
                                                     (() if tap is None else (tap,))))
    AttentionMaskInterface.register(name, mask_fn)
    saved = [(cfg, cfg._attn_implementation) for cfg in _configs(model)]
    try:
        for cfg, _ in saved:
            cfg._attn_implementation = name
        yield scope
    finally:
        for cfg, impl in saved:
            cfg._attn_implementation = impl
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


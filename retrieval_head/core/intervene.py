"""Scoped interventions on attention through transformers' ``AttentionInterface``.

No modeling file is copied. Inside ``intervene(model, hooks=[...])`` the model's
``config._attn_implementation`` names a function registered just for that scope; it sees
``module.layer_idx``, the query and the cached keys of every attention call, hands them to
the hooks (``hook.Hook``: ``ArgmaxProbe``, ``HeadMask``'s ablations and streaming,
``AttentionTap``...) and delegates to the backend the model had before (sdpa, eager,
flash...) unless a hook has the call computed here (``attend.decode_step``). On exit the
registrations are removed and the config restored, so the model is exactly as before.

Worked example (a notebook)::

    probe = ArgmaxProbe()
    with intervene(model, hooks=[probe]):                       # or intervene(model, probe=probe)
        out = model(input_ids=last_token, cache=cache)          # one decode step
    probe.positions(cache.get_seq_length() - 1, num_layers)     # [layers, batch, heads]

    heads = torch.zeros(L, H, dtype=torch.bool); heads[12, 3] = True
    with intervene(model, mask=HeadMask(heads, mode="uniform", phase="decode")):
        model.generate(...)

The layer's sliding window comes from the call's ``sliding_window`` kwarg (or the module's
attribute when the modeling file passes none; ``attend.layer_window``), because flash's
mask carries no window and our caches may keep every key of a sliding layer (prefix
reuse, stacked rows). Every call that goes to the delegate does so with
``module.config._attn_implementation`` reading the delegate's name for the duration of the
call: transformers' flash integration looks its kernel up by that name, and would not find
one under the scope's name.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from typing import Callable, Iterable, Iterator

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from ..errors import UnsupportedModelError
from ..models.shape import ModelShape
from .attend import Call, decode_step, layer_window
from .hook import Hook
from .mask import MASK_MODES, MASK_PHASES, HeadMask, PressMask
from .probe import ArgmaxProbe
from .tap import AttentionTap

__all__ = ["intervene", "Scope", "ArgmaxProbe", "HeadMask", "PressMask", "AttentionTap", "Hook", "MASK_MODES",
           "MASK_PHASES"]

# transformers' fallback when config._attn_implementation == "eager" is the modeling file's
# own eager function, which is not in the registry; ours computes the same thing.
EAGER = "eager"
PREFIX = "retrieval_head_"  # the scope's registered names start with it


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


class Backend:
    """The attention function the model had before the scope, called under its own name."""

    def __init__(self, name: str, scope_name: str):
        self.name, self.scope_name = name, scope_name
        self.fn = None if name == EAGER else ALL_ATTENTION_FUNCTIONS[name]  # None: the modeling file's eager

    def __call__(self, module, query, key, value, attention_mask, scaling, dropout, kwargs):
        fn = self.fn or modeling_eager(module)
        cfg = getattr(module, "config", None)
        swap = getattr(cfg, "_attn_implementation", None) == self.scope_name
        if swap:  # flash_attention_forward loads its kernel by module.config._attn_implementation
            cfg._attn_implementation = self.name
        try:
            return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        finally:
            if swap:
                cfg._attn_implementation = self.scope_name


class ScopedAttention:
    """The function registered for one scope: each call through the hooks (``hook.Hook``'s
    order), then to the backend or computed here."""

    def __init__(self, hooks: tuple[Hook, ...], backend: Backend, scope: Scope):
        self.hooks, self.backend, self.scope = hooks, backend, scope

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise UnsupportedModelError(f"{type(module).__name__} has no layer_idx; cannot tell its layer")
        self.scope.layers_seen.add(layer)
        call = Call(layer, query, key, value, attention_mask, scaling, kwargs.get("softcap"), kwargs.get("s_aux"),
                    layer_window(module, kwargs))

        def backend(c: Call) -> tuple[torch.Tensor, torch.Tensor | None]:  # the call's keys and query, this mask
            return self.backend(module, c.query, c.key, c.value, attention_mask, scaling, dropout, kwargs)

        for h in self.hooks:  # a hook that computes the whole call (a compressed cache's keys) takes it
            out = h.attends(call, backend)
            if out is not None:
                return out, None
        return through(self.hooks, call, backend)


def through(hooks: Iterable[Hook], call: Call, backend) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One call through ``hooks`` (``hook.Hook``'s order, ``attends`` aside): computed here
    where a hook says so (a decode step), else by ``backend`` (``Call -> (out, weights)``), then
    every hook's ``output``. A pressed cache runs its calls before the compression this way, its
    press's simulation as the only hook (``pressed_attend``)."""
    hooks = tuple(hooks)
    for h in hooks:
        call = call.replace(query=h.query(call))
    weights = None
    if call.is_decode and any(h.computes(call) for h in hooks):
        step = decode_step(call, either(h.hides(call) for h in hooks))
        for h in hooks:
            h.computed(call, step)
        out = step.out
    else:
        for h in hooks:
            h.delegated(call)
        out, weights = backend(call)
    for h in hooks:
        out = h.output(call, out)
    return out, weights


def either(masks: Iterable[torch.Tensor | None]) -> torch.Tensor | None:
    """The OR of the bool masks given (None: none)."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out | m
    return out


def modeling_eager(module) -> Callable:
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


def as_hook(h: Hook | HeadMask | PressMask) -> Hook:
    """A hook; a ``HeadMask`` stands for its ``hook()`` (a decode-phase stream mask cannot,
    nor can a ``PressMask``: each must be told each prompt's compression point)."""
    if isinstance(h, PressMask):
        raise ValueError(f"a press ({h.press.name}) compresses the cache once, at a point it must be told per prompt "
                         "(the prompt's length, or the context's): intervene(model, hooks=[mask.hook(shape, at)])")
    if not isinstance(h, HeadMask):
        return h
    if h.needs_prefill_length():
        raise ValueError(f"a {h.phase}-phase stream mask compresses the cache once (after the prefill, at the "
                         "context's end), so it must be told where (the prefill length, or the context's length): "
                         "intervene(model, hooks=[mask.hook(length)])")
    return h.hook()


def thin_hooks(probe: ArgmaxProbe | None, mask: HeadMask | PressMask | None,
               tap: AttentionTap | list[AttentionTap] | None) -> list[Hook]:
    """``intervene``'s keyword form as hooks (the mask first: the probe sees the query it leaves)."""
    taps = list(tap) if isinstance(tap, (list, tuple)) else ([] if tap is None else [tap])
    return [as_hook(h) for h in (mask, probe) if h is not None] + taps


@contextlib.contextmanager
def intervene(model, probe: ArgmaxProbe | None = None, mask: HeadMask | PressMask | None = None,
              tap: AttentionTap | list[AttentionTap] | None = None, hooks: Iterable[Hook | HeadMask | PressMask] = ()
              ) -> Iterator[Scope]:
    """Route every attention call of ``model`` through ``hooks`` (``hook.Hook``s; a
    ``HeadMask`` stands for its ``hook()``). ``probe``, ``mask`` and ``tap`` are the
    keyword form of the same: an argmax probe, a head mask, attention taps.

    Active only inside the ``with`` block; the model is left exactly as it was.
    Nesting is refused: pass every hook to one ``intervene``.
    """
    hooks = tuple(as_hook(h) for h in hooks) + tuple(thin_hooks(probe, mask, tap))
    checks = [h for h in hooks if type(h).check is not Hook.check]  # the model's shape read only when needed
    if checks:
        shape = ModelShape.from_config(model.config)
        for h in checks:
            h.check(shape)
    current = model.config._attn_implementation
    if current is not None and current.startswith(PREFIX):
        raise RuntimeError("already inside an intervene() scope on this model; pass every hook to one intervene()")
    delegate_name = current or "sdpa"
    name = f"{PREFIX}{delegate_name}_{uuid.uuid4().hex[:8]}"
    scope = Scope(model)
    attention = ScopedAttention(hooks, Backend(delegate_name, name), scope)
    # Both registries must know the name: without the mask entry transformers silently
    # builds no mask at all (sliding windows and padding would be ignored).
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[delegate_name])
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

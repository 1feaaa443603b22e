"""The interface of an intervention on attention: one object, a few questions per call.

``intervene(model, hooks=[...])`` routes every attention call of the model through its
hooks (``attend.Call``: the layer, the query, the cached keys...). For each call the scope
asks every hook, in the order given:

1. ``query(call)``: the query the call goes on with (``HeadAblation`` zeroes some heads'
   queries, so they attend uniformly);
2. ``computes(call)``: must this single-token call be computed here, from one float32
   score row per query head (``attend.decode_step``), rather than by the backend? (the
   probe needs the scores; streamed heads need a per-head key mask no backend takes);
   if any hook says so, ``hides(call)`` gives each hook's keys to hide from some heads
   (bool ``[b or 1, H or 1, 1, T]``, True = hidden; OR-ed), and ``computed(call, step)``
   shows every hook the step;
3. otherwise ``delegated(call)``: the backend computes the call (the tap reads its rows);
4. ``output(call, out)``: the call's output ``[b, q, H, d]`` (zeroed heads, the streamed
   heads' prefill).

Before all of these, ``attends(call, backend)`` lets one hook compute the whole call itself (a
head-wise or pressed cache's wrapped keys, ``headwise_attend.HeadwiseAttention``): the first
output it returns is the call's, and the other steps are skipped. ``backend(call)`` runs the
model's own attention on a call of plain tensors (``(out, weights)``), for a hook that computes
some calls around it (a pressed cache before its compression).

``check(shape)`` runs once, before the scope opens: a hook that does not fit the model
(a head mask of another shape) refuses it there. Every method's default leaves the call
alone, so a hook overrides only what it changes. Worked example, a hook that counts, per
layer, the decode steps the backend computes, and changes nothing::

    class CountSteps(Hook):
        def __init__(self):
            self.steps = {}
        def delegated(self, call):
            if call.is_decode:
                self.steps[call.layer] = self.steps.get(call.layer, 0) + 1

    counter = CountSteps()
    with intervene(model, hooks=[counter]):
        model.generate(...)
"""

from __future__ import annotations

import torch

from ..models.shape import ModelShape
from .attend import Call, Step


class Hook:
    """An intervention on attention calls (see the module's docstring); the defaults do nothing."""

    def check(self, shape: ModelShape) -> None:
        """Refuse a model this hook does not fit (raise ValueError), before the scope opens."""

    def attends(self, call: Call, backend) -> torch.Tensor | None:
        """The whole call's output ``[b, q, H, d]`` computed by this hook, or None (the usual
        path); ``backend(call)``: the model's own attention on a call of plain tensors."""
        return None

    def query(self, call: Call) -> torch.Tensor:
        """The query ``[b, H, q, d]`` the call goes on with."""
        return call.query

    def computes(self, call: Call) -> bool:
        """Whether this decode step must be computed here rather than by the backend."""
        return False

    def hides(self, call: Call) -> torch.Tensor | None:
        """In a computed step: bool ``[b or 1, H or 1, 1, T]``, keys hidden from some heads."""
        return None

    def computed(self, call: Call, step: Step) -> None:
        """Sees a step computed here (its masked float32 scores and probabilities)."""

    def delegated(self, call: Call) -> None:
        """Sees a call the backend computes (with the query the backend gets)."""

    def output(self, call: Call, out: torch.Tensor) -> torch.Tensor:
        """The call's output ``[b, q, H, d]``."""
        return out


class OnDevice:
    """Small per-device copies of a tensor, made once (so a decode step moves nothing to the
    device); keyed by whatever selects the part (a layer)."""

    def __init__(self, make):
        self.make = make  # (key, device) -> tensor
        self.copies: dict[tuple, torch.Tensor] = {}

    def get(self, key, device: torch.device) -> torch.Tensor:
        k = (key, device)
        if k not in self.copies:
            self.copies[k] = self.make(key, device)
        return self.copies[k]


def check_heads(heads: torch.Tensor, shape: ModelShape) -> None:
    """Refuse per-head settings (bool ``[..., layers, heads]``) made for another model."""
    if tuple(heads.shape[-2:]) != shape.grid:
        raise ValueError(f"mask is {tuple(heads.shape)}, model has [layers, heads] = {shape.grid}")

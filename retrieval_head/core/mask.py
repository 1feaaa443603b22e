"""Head masks: which query heads to ablate (or stream), how, and in which calls.

``HeadMask`` is the description an experiment records and batches by (heads, mode,
phase, sink, recent); ``HeadMask.hook`` turns it into the intervention
(``hook.Hook``) a scope runs: ``HeadAblation`` for the ablations, ``stream.StreamHeads``
for streaming. ``PressMask`` is its sibling for a condition that carries a press (a
``seen.Press`` at a budget; ``pressing.PressHeads``). Worked example (a notebook)::

    heads = torch.zeros(L, H, dtype=torch.bool); heads[12, 3] = True
    with intervene(model, hooks=[HeadMask(heads, mode="uniform", phase="decode")]):
        model.generate(...)

A *decode step* is an attention call whose query is a single token: phase ``decode``
masks act only there (the original's masking), phase ``all`` on the prefill too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..models.shape import ModelShape
from ..vocabulary import MASK_MODES, MASK_PHASES  # noqa: F401 (the choices, re-exported)
from .attend import Call
from .hook import Hook, OnDevice, check_heads
from .pressing import PressHeads
from .seen import Press
from .stream import StreamHeads

HEAD_MODES = MASK_MODES + ("stream",)  # and streaming heads (--keep_full)
# Streaming also takes ``context`` (kvpress's pipeline: the context's cache compressed once at
# its end C, the question after it appended whole). Its rule is ``decode``'s with C the
# context's end instead of the prompt's: ``stream.stream_keep(..., at=C)``, applied to the
# prefill's rows from C on too (with C the whole prompt, phase ``decode`` exactly).
STREAM_PHASES = MASK_PHASES + ("context",)


@dataclass(frozen=True)
class HeadMask:
    """Which query heads to ablate (or stream), and how.

    heads: bool ``[layers, heads]``; True = ablated. ``[batch, layers, heads]`` gives each
           batch row its own heads (several conditions decoded as one batch).
    mode:  ``uniform`` zeroes the head's query, so it attends uniformly over the (causal,
           windowed) prefix and outputs the mean of the values (the original's ablation);
           ``zero`` zeroes the head's output before ``o_proj``;
           ``stream`` lets the head attend only to the first ``sink`` and the last
           ``recent`` keys (DuoAttention's streaming heads; see ``stream.stream_keep``).
    phase: ``decode`` acts only on single-token (decode) calls, as the original (for
           ``stream``: the prompt's cache compressed once after the prefill, as kvpress's
           presses do); ``all`` acts on the prefill too (``stream``: as if the head's cache
           had been compressed from the first token, DuoAttention); ``context`` (``stream``
           only): the context's cache compressed once at its end, the question's rows after
           it see the compressed context and every key from its end on (kvpress's pipeline).
    """

    heads: torch.Tensor
    mode: str = "uniform"
    phase: str = "decode"
    sink: int = 0  # stream: the first keys every streamed head keeps
    recent: int = 0  # stream: and the last ones (the query itself included)

    def __post_init__(self):
        if self.mode not in HEAD_MODES:
            raise ValueError(f"mask mode must be one of {HEAD_MODES}, got {self.mode!r}")
        if self.phase not in STREAM_PHASES or (self.phase == "context" and self.mode != "stream"):
            raise ValueError(f"mask phase must be one of {MASK_PHASES} ({STREAM_PHASES} for stream), "
                             f"got {self.phase!r}")
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

    def needs_prefill_length(self) -> bool:
        """A decode- or context-phase stream mask compresses the cache once (after the
        prefill, at the context's end): its hook must be told where (``hook(prefill_length)``)."""
        return self.mode == "stream" and self.phase in ("decode", "context")

    def hook(self, prefill_length: torch.Tensor | int | None = None, start: torch.Tensor | None = None) -> Hook:
        """The intervention, for one scope. prefill_length: per batch row (long ``[b]`` or an
        int), the keys its prompt's prefill cached (decode-phase streaming), or the context's
        length (context-phase streaming); unused otherwise. start: streaming, per batch row,
        its first real position (left padding: the sink is the row's first tokens)."""
        decode_only = self.phase == "decode"
        if self.mode == "stream":
            once = self.phase in ("decode", "context")
            return StreamHeads(self.heads, self.sink, self.recent, prefill_length if once else None, decode_only,
                               start)
        return HeadAblation(self.heads, self.mode, decode_only)


class HeadAblation(Hook):
    """Ablated heads: ``uniform`` zeroes their query (uniform attention over the keys they
    may see, the mean of the values), ``zero`` their output.

    heads: bool ``[layers, heads]`` or ``[batch, layers, heads]``; decode_only: act only on
    decode steps."""

    def __init__(self, heads: torch.Tensor, mode: str, decode_only: bool):
        if mode not in MASK_MODES:
            raise ValueError(f"an ablation's mode must be one of {MASK_MODES}, got {mode!r}")
        self.heads, self.mode, self.decode_only = heads, mode, decode_only
        self.on_device = OnDevice(lambda layer, dev: heads[..., layer, :].reshape(-1, heads.shape[-1]).to(dev))

    def check(self, shape: ModelShape) -> None:
        check_heads(self.heads, shape)

    def _ablated(self, call: Call) -> torch.Tensor | None:
        if self.decode_only and not call.is_decode:
            return None
        return self.on_device.get(call.layer, call.query.device)  # [b or 1, H]

    def query(self, call: Call) -> torch.Tensor:
        ablated = self._ablated(call) if self.mode == "uniform" else None
        return call.query if ablated is None else call.query.masked_fill(ablated[:, :, None, None], 0.0)

    def output(self, call: Call, out: torch.Tensor) -> torch.Tensor:
        ablated = self._ablated(call) if self.mode == "zero" else None
        return out if ablated is None else out.masked_fill(ablated[:, None, :, None], 0.0)  # out: [b, q, H, d]


PRESS_PHASES = ("decode", "context")  # a token press compresses once; phase all is streaming's alone


@dataclass(frozen=True)
class PressMask:
    """A condition that compresses the cache with a press: ``press`` (``seen.Press``) keeping
    ``budget`` of the cache's keys (the mean of its ``layer_shares``), once at the point
    ``phase`` says (``decode``: the prompt's end, after its prefill; ``context``: the
    context's end, the question after it appended whole). Its hook must be told that point
    per prompt (``hook(shape, at)``), as a decode-phase stream mask must."""

    press: Press
    budget: float
    phase: str = "decode"

    def __post_init__(self):
        if self.phase not in PRESS_PHASES:
            raise ValueError(f"a press compresses once (phase {' or '.join(PRESS_PHASES)}), got {self.phase!r}: "
                             "only streaming heads compress from the first token (HeadMask(heads, 'stream', 'all'))")
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"a press's budget is the share of the cache it keeps, in (0, 1], got {self.budget}")

    def params(self) -> dict:
        """The press's parameters, JSON-ready: its dataclass fields (else its public
        attributes), a tensor (a head ranking) as its shape, anything else not a number,
        string or bool as its repr."""
        p = self.press
        items = ({f.name: getattr(p, f.name) for f in dataclasses.fields(p)} if dataclasses.is_dataclass(p)
                 else {k: v for k, v in vars(p).items() if not k.startswith("_")})
        return {k: _param(v) for k, v in items.items()}

    def describe(self) -> dict:
        """JSON-ready record of the condition: the press's name and parameters, the budget, the phase."""
        return {"press": self.press.name, "params": self.params(), "budget": self.budget, "phase": self.phase}

    def needs_prefill_length(self) -> bool:
        return True  # every phase compresses once, at a point the hook is told

    def planned(self, at: torch.Tensor | int):
        """The press, planned for its compression point: a press that plans for one context
        length (``presses.duo.Duo``'s ``length``) and was given none plans for the keys at ``at``
        (the longest row's)."""
        if getattr(self.press, "length", 0) is not None or not dataclasses.is_dataclass(self.press):
            return self.press
        return dataclasses.replace(self.press, length=int(torch.as_tensor(at).max()))

    def hook(self, shape: ModelShape, at: torch.Tensor | int, start: torch.Tensor | None = None) -> PressHeads:
        """The intervention, for one scope: ``at`` per batch row (long ``[b]`` or an int), the
        prompt's length (phase decode) or the context's (phase context); ``start`` per batch
        row, its first real position (left padding). A press planned for one length and given
        none is planned at ``at`` (``planned``)."""
        press = self.planned(at)
        return PressHeads(press, press.layer_shares(shape, self.budget), at, start)


def _param(v):
    """A press parameter as a record holds it: a number, string, bool or None as it is, a
    tensor (a head ranking) as its shape, anything else as its repr."""
    if isinstance(v, (bool, int, float, str, type(None))):
        return v
    if isinstance(v, torch.Tensor):
        return f"tensor {list(v.shape)}"
    return repr(v)

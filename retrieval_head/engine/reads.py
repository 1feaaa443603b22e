"""What the scheduler reads on a trial besides its tokens: the reads a method asks for.

A head-identification method (``retrieval_head.methods``) says which reads it needs; the
scheduler (``Scheduler.run(jobs, reads=...)``) installs each read's hook in the scope it
names and hands every ``Decoded`` row the read's result for it, in ``row.reads[read.name]``.
The scheduler knows no method: a new method needs a read (one of these, or a class of its
own with the same four members) and no scheduler change.

A ``Read`` has a ``name`` (the key of its result), a ``phase`` and ``open``:

- ``phase == "prefill"``: ``open([prompt], num_layers)`` before one prompt's prefill; the
  reading's ``hook`` sees the prefill (its rows from ``first_row`` on are always prefilled,
  never reused from a shared prefix), then ``result(0)`` is the prompt's result, which every
  row of the prompt gets;
- ``phase == "decode"``: ``open(prompts, num_layers, query_position)`` before a decode
  batch (``prompts[i]``: row i's prompt, every row's last prompt token at
  ``query_position``); its ``hook`` sees every step, ``step(row, t)`` is called after step
  ``t`` for every row still decoding, then ``result(row)`` is the row's result.

``cost()`` names seconds a reading spent (added to the scheduler's stats).

The three reads of detection's methods: ``ArgmaxRead`` (where each head looks at each
decode step, the retrieval score's), ``SpanMassRead`` (the mass on the needle span per
decode step, needle-mass) and ``TapRead`` (a prefill tap of chosen query rows, query-focus).

    >>> ArgmaxRead().name, ArgmaxRead().phase, SpanMassRead().name, SpanMassRead().phase
    ('positions', 'decode', 'span_mass', 'decode')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from ..core.attend import Call, Step
from ..core.hook import Hook
from ..core.probe import ArgmaxProbe, span_mass
from ..core.tap import AttentionTap
from ..inputs.prompt import Prompt

PREFILL, DECODE = "prefill", "decode"


class Reading(Protocol):
    """A read at work in one scope (one prompt's prefill, or one decode batch)."""

    hook: Hook
    first_row: int | None  # prefill: the first row its hook must see prefilled (None: none)

    def step(self, row: int, t: int) -> None: ...

    def result(self, row: int) -> Any: ...

    def cost(self) -> dict[str, float]: ...


class Read(Protocol):
    """What a method asks the scheduler to read (module docstring)."""

    name: str
    phase: str

    def open(self, prompts: list[Prompt], num_layers: int, query_position: int = 0) -> Reading: ...


@dataclass(frozen=True)
class ArgmaxRead:
    """Each head's absolute argmax key position at every decode step: ``[steps, layers, heads]``
    (``ArgmaxProbe``; the retrieval score reads it, ``Decoded.positions``)."""

    name: str = "positions"
    phase: str = DECODE

    def open(self, prompts: list[Prompt], num_layers: int, query_position: int = 0) -> _Argmax:
        return _Argmax(ArgmaxProbe(), num_layers, query_position, len(prompts))


class _Steps:
    """A decode reading that keeps one ``[layers, ...]`` record per row and step, the step's
    records read once for all its rows (``at(t)``)."""

    first_row = None

    def __init__(self, hook: Hook, num_layers: int, query_position: int, rows: int):
        self.hook, self.num_layers, self.query_position = hook, num_layers, query_position
        self.steps: list[list[torch.Tensor]] = [[] for _ in range(rows)]
        self.t, self.last = -1, None

    def at(self, t: int) -> torch.Tensor:
        raise NotImplementedError

    def step(self, row: int, t: int) -> None:
        if t != self.t:
            self.t, self.last = t, self.at(t)
        self.steps[row].append(self.last[:, row])

    def cost(self) -> dict[str, float]:
        return {}


class _Argmax(_Steps):
    def at(self, t: int) -> torch.Tensor:
        pos = self.hook.positions(self.query_position + t, self.num_layers)  # [layers, rows, heads]
        self.hook.clear()  # a layer the next step does not reach is then refused, not read stale
        return pos

    def result(self, row: int) -> torch.Tensor:
        return torch.stack(self.steps[row], dim=1).transpose(0, 1)  # [steps, layers, heads]


@dataclass(frozen=True)
class SpanMassRead:
    """Each head's softmax mass on the row's prompt's needle span, averaged over the row's
    decode steps: float64 ``[layers, heads]`` (needle-mass)."""

    name: str = "span_mass"
    phase: str = DECODE

    def open(self, prompts: list[Prompt], num_layers: int, query_position: int = 0) -> _SpanMass:
        spans = torch.tensor([p.needle_span for p in prompts])
        return _SpanMass(SpanMassHook(spans), num_layers, query_position, len(prompts))


class SpanMassHook(Hook):
    """Has every decode step computed here and keeps, per layer, each row's softmax mass
    on its key span (``spans``: long ``[b, 2]``, absolute positions; ``probe.span_mass``)."""

    def __init__(self, spans: torch.Tensor):
        self.spans = spans
        self.mass: dict[int, torch.Tensor] = {}  # layer -> [batch, heads]

    def computes(self, call: Call) -> bool:
        return call.is_decode

    def computed(self, call: Call, step: Step) -> None:
        self.mass[call.layer] = span_mass(step.probs, self.spans)


class _SpanMass(_Steps):
    def at(self, t: int) -> torch.Tensor:
        mass = torch.stack([self.hook.mass[i].float().cpu() for i in range(self.num_layers)])  # [layers, rows, heads]
        self.hook.mass = {}  # each step's own
        return mass

    def result(self, row: int) -> torch.Tensor:
        return torch.stack(self.steps[row]).double().mean(0)  # over the row's steps


@dataclass(frozen=True)
class TapRead:
    """A prefill tap (``tap.AttentionTap``): ``tap(prompt)`` says which query rows read which
    keys; the result is each head's mass averaged over the rows, float64 ``[layers, heads]``
    (query-focus: the question's rows on the needle span). Its seconds go to ``tap_s``."""

    name: str
    tap: Callable[[Prompt], AttentionTap]
    phase: str = PREFILL

    def open(self, prompts: list[Prompt], num_layers: int, query_position: int = 0) -> _Tapped:
        (prompt,) = prompts
        return _Tapped(self.tap(prompt), num_layers)


class _Tapped:
    def __init__(self, hook: AttentionTap, num_layers: int):
        self.hook, self.num_layers = hook, num_layers
        self.first_row = int(hook.rows.min())

    def step(self, row: int, t: int) -> None:
        raise ValueError("a prefill read sees no decode step")

    def result(self, row: int) -> torch.Tensor:
        return self.hook.mean(self.num_layers)[:, 0]

    def cost(self) -> dict[str, float]:
        return {"tap_s": self.hook.seconds}

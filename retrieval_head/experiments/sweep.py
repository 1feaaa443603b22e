"""Planning a sweep, for both experiments: the grid, the trial keys, the haystacks, and
every check that can fail before a trial runs.

A sweep is needles x context lengths x depths. ``SweepSettings`` holds what both
experiments share (the grid as the original spells it, the haystack, the prompt, the
decoding, the speed levers); ``plan`` checks it against the tokenizer and the model shape
(no weights needed) and returns a ``Plan`` that builds each trial's prompt.

    >>> SweepSettings(context_lengths=(900, 300, 900), num_depths=3).lengths(), SweepSettings(num_depths=3).depths()
    ([300, 900], [0, 50, 100])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.shard import assign
from ..errors import UserError
from ..inputs.grid import TrialKey, sweep_depths, sweep_lengths  # noqa: F401 (re-exported: the sweep's API)
from ..inputs.haystack import (
    Needle,
    default_haystack_dir,
    original_layout,
    read_haystack,
)
from ..inputs.prompt import Prompt, PromptBuilder, uses_chat_template
from ..inputs.tasks import build_task_prompt, make_trial
from ..models.shape import ModelShape
from .settings import SweepSettings, check_distinct, check_seeds  # noqa: F401 (re-exported: the sweep's API)

log = logging.getLogger(__name__)


@dataclass
class Haystacks:
    """One PromptBuilder per haystack source (``--haystack_dir``, else a needle's own, else the default).

    ``layout`` says which, for the manifest: ``folder`` (one folder for every needle),
    ``original`` (the original's haystack_for_detect/, needle i reading part{i+1}: the needles
    carry it) or ``needles`` (each needle's own ``haystack``, else the default)."""

    tokenizer: object
    chat_template: bool
    override: Path | None = None
    layout: str = "needles"
    _builders: dict = field(default_factory=dict)

    def source(self, needle: Needle) -> Path:
        return self.override or needle.haystack or default_haystack_dir()

    def for_needle(self, needle: Needle) -> PromptBuilder:
        src = self.source(needle)
        if src not in self._builders:
            self._builders[src] = PromptBuilder(self.tokenizer, read_haystack(src), self.chat_template)
        return self._builders[src]


@dataclass
class Plan:
    """A checked sweep: needles, grid and haystacks, ready to run."""

    needles: list[Needle]
    lengths: list[int]
    depths: list[int]
    haystacks: Haystacks
    max_new_tokens: int
    task: str = "single"
    task_seed: int = 0

    def keys(self, shard: tuple[int, int] = (0, 1)) -> list[TrialKey]:
        """Every trial in canonical order, or rank ``shard[0]``'s share of ``shard[1]``
        (balanced by token cost, see ``shard.assign``)."""
        keys = [TrialKey(n.needle_id, L, d) for n in self.needles for L in self.lengths for d in self.depths]
        if shard[1] == 1:
            return keys
        return assign(keys, lambda k: k.context_length + self.max_new_tokens, shard[1])[shard[0]]

    def needle(self, key: TrialKey) -> Needle:
        return next(n for n in self.needles if n.needle_id == key.needle_id)

    def prompt(self, key: TrialKey) -> Prompt:
        """The trial's prompt: the needle's (task ``single``), else the generated task's, cut
        from the needle's haystack (a ``TaskPrompt``)."""
        n = self.needle(key)
        builder = self.haystacks.for_needle(n)
        if self.task == "single":
            return builder.build(n, key.context_length, key.depth_percent)
        trial = make_trial(self.task, self.task_seed, key.context_length, key.depth_percent, n.needle_id)
        return build_task_prompt(builder, trial, key.context_length)

    def source(self, key: TrialKey) -> str:
        """The haystack a trial's prompt is cut from (prompts of one source share prefixes)."""
        return str(self.haystacks.source(self.needle(key)))

    def pairing(self) -> dict:
        """Which haystack each needle reads, as the manifest records it."""
        pairs = [{"needle_id": n.needle_id, "haystack": str(self.haystacks.source(n))} for n in self.needles]
        return {"layout": self.haystacks.layout, "needles": pairs}


def plan(tokenizer, shape: ModelShape, settings: SweepSettings, needles: list[Needle] | None = None,
         task: str = "single") -> Plan:
    """Check everything a sweep needs before any weight is loaded or any file written; ``task``:
    which of ``settings.task`` this plan builds the prompts of."""
    st = settings
    st.check()
    needles = needles if needles is not None else st.needle_list()
    lengths = st.lengths()
    override = st.haystack_override()
    layout = "folder" if override else "original" if original_layout(st.haystack_dir) else "needles"
    hay = Haystacks(tokenizer, uses_chat_template(tokenizer, st.chat_template), override, layout)
    for n in needles:
        b = hay.for_needle(n)
        over = b.overhead(n)
        if lengths[0] < over:
            raise UserError(f"context length {lengths[0]} is below needle {n.needle_id}'s fixed prompt overhead "
                            f"({over} tokens: template, needle, question); raise --s to at least {over}")
        if lengths[-1] - over > len(b.haystack):
            raise UserError(f"the haystack has {len(b.haystack)} tokens, too short for context length "
                            f"{lengths[-1]}; lower --e or pass a larger --haystack_dir")
    new_tokens = st.decoding(task)[0]
    if shape.max_positions is not None and lengths[-1] + new_tokens > shape.max_positions:
        raise UserError(f"context length {lengths[-1]} + {new_tokens} new tokens exceeds the model's "
                        f"{shape.max_positions} positions; lower --e or use a long-context --model_path")
    out = Plan(needles, lengths, st.depths(), hay, new_tokens, task, st.task_seed)
    if task != "single":  # a generated task's overhead varies with its draws: build the extreme cells
        for k in {k for k in out.keys() if k.context_length in (lengths[0], lengths[-1])}:
            out.prompt(k)
    return out



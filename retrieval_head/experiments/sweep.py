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

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.scheduler import Levers
from ..engine.shard import assign
from ..errors import UserError
from ..inputs.grid import TrialKey, sweep_depths, sweep_lengths  # noqa: F401 (re-exported: the sweep's API)
from ..inputs.haystack import (
    NEEDLES_NAME,
    Needle,
    default_haystack_dir,
    load_needles,
    original_layout,
    pair_with_parts,
    read_haystack,
)
from ..inputs.prompt import Prompt, PromptBuilder, uses_chat_template
from ..inputs.tasks import ANSWER_TOKENS, MULTI_ANSWER, TASKS, build_task_prompt, check_tasks, make_trial
from ..models.shape import ModelShape
from ..options import option

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSettings:
    """What both experiments share; each command's settings extend it."""

    s: int = option(0, "shortest context length", flags=("-s", "--s_len"))
    e: int = option(5000, "longest context length", flags=("-e", "--e_len"))
    num_lengths: int = option(20, "lengths: round(linspace(s, e, N))")
    num_depths: int = option(10, "depths: round(linspace(0, 100, N))")
    context_lengths: tuple[int, ...] | None = option(None, "explicit lengths in tokens (overrides s/e)")
    depth_percents: tuple[int, ...] | None = option(None, "explicit depths in 0..100 (overrides num_depths)")
    haystack_dir: str | None = option(None, "folder of UTF-8 .txt files, or the original's haystack_for_detect/ "
                                            "(needles.jsonl beside part1, part2, ...: needle i reads part{i+1}); "
                                            "none: Paul Graham essays", result=True)
    needles: str | None = option(None, "needles JSON-lines file; none: the package's own "
                                       "(retrieval_head/data/needles.jsonl)")
    chat_template: str = option("auto", "auto: the tokenizer's when it has one", choices=("auto", "on", "off"),
                                result=True)
    max_new_tokens: int = option(50, "greedy answer length at most", result=True)
    prefill_chunk: int | None = option(None, "prefill in chunks of N tokens (bounds memory)", result=True)
    task: tuple[str, ...] = option(("single",), f"retrieval tasks ({', '.join(TASKS)}; several allowed): single "
                                               "is the one needle of --needles; the others are RULER-style, "
                                               "generated (docs/tasks.md)")
    task_seed: int = option(0, "seed of the generated tasks' keys, values and distractor depths")
    # Speed levers: they change no score and no response (tests/test_prefix.py, test_batched.py).
    prefix_reuse: bool = option(True, "run prompts in insertion order, prefilling only what follows the prefix "
                                      "they share")
    batch_tokens: int | None = option(None, "decode rows of one prompt length together while their caches hold at "
                                            "most this many tokens; none: 16384 or what 1/4 of the free memory "
                                            "holds; 0: one row at a time")

    def __post_init__(self):  # lists from the API become tuples (the settings stay hashable)
        for name in ("context_lengths", "depth_percents"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))

    def lengths(self) -> list[int]:
        lengths = self.context_lengths or sweep_lengths(self.s, self.e, self.num_lengths)
        if any(x <= 0 for x in lengths):
            raise UserError("--context_lengths must all be positive")
        return sorted(set(lengths))

    def depths(self) -> list[int]:
        depths = self.depth_percents if self.depth_percents is not None else sweep_depths(self.num_depths)
        bad = [d for d in depths if not 0 <= d <= 100]
        if bad:
            raise UserError(f"depth {bad[0]} is outside 0..100; fix --depth_percents")
        return sorted(set(depths))

    def needle_list(self) -> list[Needle]:
        """The sweep's needles: ``needles``, else an original-layout ``haystack_dir``'s own
        needles.jsonl, else the package's; in the original's layout each reads its part folder."""
        layout = original_layout(self.haystack_dir)
        if layout is None:
            return load_needles(self.needles)
        return pair_with_parts(layout, load_needles(self.needles or layout / NEEDLES_NAME))

    def haystack_override(self) -> Path | None:
        """The one haystack every needle reads (``haystack_dir`` as a plain folder), or None."""
        if self.haystack_dir is None or original_layout(self.haystack_dir) is not None:
            return None
        return Path(self.haystack_dir)

    def applied(self) -> dict:
        """The settings as a manifest records them; the task fields only when a task other than
        ``single`` runs, so a single-needle run's files read exactly as before tasks existed."""
        out = dataclasses.asdict(self)
        if self.task == ("single",):
            out.pop("task"), out.pop("task_seed")
        return out

    def decoding(self, task: str) -> tuple[int, bool]:
        """(max_new_tokens, stop at a newline) applied to ``task``: answers of several values
        may take several lines and more tokens, so they stop only at EOS (or the limit), which
        is at least ``ANSWER_TOKENS``.

        >>> SweepSettings().decoding("single"), SweepSettings().decoding("vt")
        ((50, True), (120, False))
        """
        if task in MULTI_ANSWER:
            return max(self.max_new_tokens, ANSWER_TOKENS), False
        return self.max_new_tokens, True

    def levers(self) -> Levers:
        return Levers(prefix_reuse=self.prefix_reuse, batch_tokens=self.batch_tokens, prefill_chunk=self.prefill_chunk)

    def check(self) -> None:
        """Everything that is wrong without looking at a file or a model."""
        self.lengths(), self.depths(), check_tasks(self.task)
        check_seeds("--task_seed", self.task_seed)
        if self.max_new_tokens < 1:
            raise UserError("--max_new_tokens must be at least 1")
        if self.batch_tokens is not None and self.batch_tokens < 0:
            raise UserError("--batch_tokens must be 0 (one at a time) or a positive number of tokens")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise UserError("--prefill_chunk must be a positive number of tokens")


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


SEEDS = (-(2 ** 63), 2 ** 64 - 1)  # what torch.Generator.manual_seed takes


def check_seeds(flag: str, *seeds: int) -> None:
    """Refuse a seed ``torch.Generator.manual_seed`` cannot take, naming the option.

    >>> check_seeds("--seed", 0, -1, 2 ** 64 - 1)
    >>> check_seeds("--seeds", 3, 2 ** 64)
    Traceback (most recent call last):
    ...
    retrieval_head.errors.UserError: --seeds 18446744073709551616 is not a seed; pass an integer in -2**63..2**64-1
    """
    for s in seeds:
        if not SEEDS[0] <= s <= SEEDS[1]:
            raise UserError(f"{flag} {s} is not a seed; pass an integer in -2**63..2**64-1")


def check_distinct(flag: str, values) -> None:
    """Refuse a value listed twice (each value of a several-valued option is a condition of its own).

    >>> check_distinct("--keep_full", (0, 4, 0))
    Traceback (most recent call last):
    ...
    retrieval_head.errors.UserError: --keep_full lists 0 twice; pass each value once
    """
    seen = set()
    for v in values or ():
        if v in seen:
            raise UserError(f"{flag} lists {v} twice; pass each value once")
        seen.add(v)

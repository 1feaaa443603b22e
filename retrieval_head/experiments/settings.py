"""The settings of the needle experiments, as dataclasses: the one source of each command's
defaults, help and choices (``options``), importable without torch so that every
``--help`` answers at once (the experiments themselves import these).

    >>> SweepSettings(context_lengths=(900, 300, 900), num_depths=3).lengths(), SweepSettings(num_depths=3).depths()
    ([300, 900], [0, 50, 100])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..inputs.grid import sweep_depths, sweep_lengths
from ..inputs.haystack import NEEDLES_NAME, Needle, load_needles, original_layout, pair_with_parts
from ..inputs.tasks import ANSWER_TOKENS, MULTI_ANSWER, TASKS, check_tasks
from ..models.shape import ModelShape
from ..options import option
from ..vocabulary import CACHE_CHOICES, CHAT_TEMPLATE, MASK_MODES, PHASES, PRESSES, RANKED_PRESSES, UNITS


def check_chat_template(value: str) -> None:
    """``--chat_template``: auto, on, off, none, or a readable template file."""
    if value not in CHAT_TEMPLATE and not Path(value).is_file():
        raise UserError(f"--chat_template {value}: not auto, on, off or none, and no such file; pass one of those "
                        "or a Jinja template file")


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


def press_args(items) -> dict[str, str]:
    """``--press_args key=value ...`` as a dict of strings (each press types its own values).

    >>> press_args(("window=32", "press=knorm"))
    {'window': '32', 'press': 'knorm'}
    >>> press_args(("window",))
    Traceback (most recent call last):
    ...
    retrieval_head.errors.UserError: --press_args window is not key=value; pass e.g. --press_args window=32
    """
    out = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise UserError(f"--press_args {item} is not key=value; pass e.g. --press_args window=32")
        if key.strip() in out:
            raise UserError(f"--press_args names {key.strip()} twice; pass each parameter once")
        out[key.strip()] = value.strip()
    return out


def check_press(presses, budgets, args, phase: str = "decode") -> None:
    """``--press``, ``--budget`` and ``--press_args`` as the command line can check them: known
    presses, budgets in (0, 1], each once, parameters as key=value, one compression point."""
    presses = (presses,) if isinstance(presses, str) else tuple(presses or ())
    for name in presses:
        if name not in PRESSES:
            raise UserError(f"--press {name} is not a press; choose from {', '.join(PRESSES)}")
    if presses and not budgets:
        raise UserError(f"--press {presses[0]} needs --budget F (the share of the KV cache it keeps, in (0, 1])")
    if budgets and not presses:
        raise UserError("--budget is a press's share of the KV cache: add --press NAME")
    if args and not presses:
        raise UserError("--press_args are a press's parameters: add --press NAME")
    for b in budgets or ():
        if not 0.0 < b <= 1.0:
            raise UserError(f"--budget {b:g} is not a share of the KV cache; pass values in (0, 1]")
    check_distinct("--budget", budgets)
    press_args(args)
    if presses and phase == "all":
        raise UserError("a press compresses the cache once (--phase decode); --phase all is streaming's "
                        "(--keep_full)")


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
    chat_template: str = option("auto", result=True, metavar="{auto,on,off,FILE}")
    max_new_tokens: int = option(50, result=True)
    prefill_chunk: int | None = option(None, "prefill in chunks of N tokens (bounds memory)", result=True)
    task: tuple[str, ...] = option(("single",), f"retrieval tasks ({', '.join(TASKS)}; several allowed, one "
                                               "result set each): single is the one needle of --needles; the "
                                               "others are RULER-style, generated (docs/tasks.md)")
    task_seed: int = option(0, "seed of the generated tasks' keys, values and distractor depths")
    # Speed levers: they change no score and no response (tests/test_prefix.py, test_batched.py).
    prefix_reuse: bool = option(True)
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

    def levers(self):
        from ..engine.scheduler import Levers  # torch: only when a sweep runs, never for --help

        return Levers(prefix_reuse=self.prefix_reuse, batch_tokens=self.batch_tokens, prefill_chunk=self.prefill_chunk)

    def check(self) -> None:
        """Everything that is wrong without looking at a file or a model."""
        self.lengths(), self.depths(), check_tasks(self.task), check_chat_template(self.chat_template)
        check_seeds("--task_seed", self.task_seed)
        if self.max_new_tokens < 1:
            raise UserError("--max_new_tokens must be at least 1")
        if self.batch_tokens is not None and self.batch_tokens < 0:
            raise UserError("--batch_tokens must be 0 (one at a time) or a positive number of tokens")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise UserError("--prefill_chunk must be a positive number of tokens")


@dataclass(frozen=True)
class NiahSettings(SweepSettings):
    """Everything that defines a masked needle test besides the model: the single source of
    defaults, help and choices for the API and ``needle_in_haystack_with_mask.py``."""

    s: int = option(1000, "shortest context length", flags=("-s", "--s_len"))
    mask_top: tuple[int, ...] = option((0,))
    head_score: str | None = option(None, "a head-score file of any accepted format; none: head_score/<model>.json "
                                          "(<model>.kv_max.json with --unit kv)")
    mask_mode: str = option("uniform", "uniform: zero the query (attend uniformly, the original); zero: zero the "
                                       "head's output", choices=MASK_MODES)
    phase: str = option("decode", choices=PHASES)
    unit: str | None = option(None, choices=UNITS)
    keep_full: tuple[int, ...] | None = option(None)
    keep_fraction: tuple[float, ...] | None = option(None, metavar="F")
    press: str | None = option(None, "a KV-cache press (docs/presses.md): the prompt's cache compressed once after "
                                     "its prefill to --budget of its keys; duo and headkv rank heads by --head_score "
                                     "read per KV head (none: head_score/<model>.kv_max.json)", choices=PRESSES)
    budget: tuple[float, ...] | None = option(None, metavar="F")
    press_args: tuple[str, ...] | None = option(None, metavar="KEY=VALUE")
    sink: int = option(4)
    recent: int = option(64)
    cache: str = option("auto", "streaming (--keep_full): real runs a head-wise KV cache that drops the streamed "
                                "KV heads' keys (a KV head serving a kept query head stays full); masked simulates "
                                "it on a full cache; auto: real where the kept heads are whole KV heads "
                                "(--unit kv). A press (--press): real runs a pressed KV cache holding only the "
                                "keys it keeps (auto: masked)", choices=CACHE_CHOICES)
    seed: int = option(0)
    seeds: tuple[int, ...] | None = option(None)
    needle: str | None = option(None, "the needle sentence (with --question and --real_needle)")
    question: str | None = option(None, "the question asked about --needle")
    real_needle: str | None = option(None, "the answer, inside --needle")
    needle_id: int = option(0, "which needle of --needles (0-based)")

    def check(self) -> None:
        super().check()
        if self.sink < 0 or self.recent < 1:
            raise UserError("--sink must be >= 0 and --recent >= 1 (a streamed head sees at least itself)")
        check_seeds("--seed", self.seed)
        check_seeds("--seeds", *(self.seeds or ()))
        for flag, values in (("--mask_top", self.mask_top), ("--keep_full", self.keep_full), ("--seeds", self.seeds),
                             ("--keep_fraction", self.keep_fraction)):
            check_distinct(flag, values)  # a value twice would write one condition's folder twice
        for f in self.keep_fraction or ():
            if not -1.0 <= f <= 1.0:
                raise UserError(f"--keep_fraction {f:g} is not a share of the heads; pass values in -1..1")
        check_press(self.press, self.budget, self.press_args, self.phase)
        masked = self.keep_counts(1) is not None or any(self.mask_top)
        if self.phase == "context" and masked:  # streamed or masked heads: the scheduler's point is the prompt's end
            raise UserError("--phase context is not in the needle test yet for streamed or masked heads (presses have "
                            "it: --press NAME --budget F; generate has it: retrieval-head generate PROMPT --question Q "
                            "--phase context); pass --phase decode or all")

    def keep_counts(self, units: int) -> tuple[int, ...] | None:
        """``keep_full`` with ``keep_fraction`` turned into counts of ``units`` heads (each once).

        >>> NiahSettings(keep_full=(0, 27), keep_fraction=(0.1, -0.1, 0.0)).keep_counts(270)
        (0, 27, -27)
        """
        if self.keep_full is None and self.keep_fraction is None:
            return None
        counts = [*(self.keep_full or ()), *(round(f * units) for f in self.keep_fraction or ())]
        return tuple(dict.fromkeys(counts))

    def check_stream(self, shape: ModelShape) -> None:
        """Streaming (``--keep_full``) that would stream something on this model."""
        if self.keep_counts(1) is not None and shape.max_positions and self.sink + self.recent >= shape.max_positions:
            raise UserError(f"--sink {self.sink} + --recent {self.recent} cover the model's {shape.max_positions} "
                            "positions: no key would ever be streamed; pass smaller values")

    def the_needle(self) -> Needle:
        """The needle this test uses: the one given as text, else ``needle_id`` of the sweep's
        needles (``needle_list``; in the original's layout, with its part folder)."""
        given = [self.needle, self.question, self.real_needle]
        if any(given):
            if not all(given):
                raise UserError("--needle, --question and --real_needle go together; give all three")
            n = Needle(0, self.needle.strip(), self.question.strip(), self.real_needle.strip())
            n.answer_span()
            layout = original_layout(self.haystack_dir)
            return pair_with_parts(layout, [n])[0] if layout else n  # the original's layout: part1
        needles = self.needle_list()
        if not 0 <= self.needle_id < len(needles):
            raise UserError(f"--needle_id {self.needle_id}: {self.needles or 'the needles file'} has "
                            f"{len(needles)} needles")
        return needles[self.needle_id]


JUDGE_KS = (5, 11, 19, 27)  # the judge's K without --press


@dataclass(frozen=True)
class JudgeSettings(SweepSettings):
    """The causal judge: each method's top-K heads masked (``mask_top``), or (``press``) a press
    that ranks heads (duo, headkv) ranked by each method's file at each ``budget``."""

    s: int = option(1000, "shortest context length", flags=("-s", "--s_len"))
    head_score: tuple[str, ...] | None = option(None, "head-score files, one per method (<model>.<method>.json "
                                                      "names its method; any accepted format); the first named "
                                                      "retrieval's (else the first) is the random draws' pool")
    mask_top: tuple[int, ...] | None = option(None, "K: each method's top-K heads masked, and K random heads; "
                                                    f"none: {' '.join(map(str, JUDGE_KS))} (none with --press)")
    seeds: tuple[int, ...] = option((0, 1, 2), "random draws per K (per budget with --press: random head "
                                               "rankings), one row each")
    mask_mode: str = option("uniform", "uniform: zero the query (the original); zero: zero the head's output",
                            choices=MASK_MODES)
    press: str | None = option(None, "judge by a press instead of masking: duo or headkv, ranking KV heads by each "
                                     "method's file (read per KV head), at each --budget; higher scores win",
                               choices=PRESSES)
    budget: tuple[float, ...] | None = option(None, "with --press: the shares of the KV cache it keeps, in (0, 1]",
                                              metavar="F")
    press_args: tuple[str, ...] | None = option(None, metavar="KEY=VALUE")
    needle_id: int = option(0, "which needle of --needles (0-based)")
    task: tuple[str, ...] = option(("single",), f"the retrieval task, one ({', '.join(TASKS)}): single is the one "
                                               "needle of --needles; the others are RULER-style (docs/tasks.md)")

    def __post_init__(self):
        super().__post_init__()
        if self.mask_top is None and self.press is None:  # masking, the judge's first question: its Ks
            object.__setattr__(self, "mask_top", JUDGE_KS)

    def levels(self) -> tuple:
        """What the judge varies: K (heads masked) or, with a press, the budget."""
        return self.budget if self.press else self.mask_top

    def check(self) -> None:
        super().check()
        if not self.head_score:
            raise UserError("the judge needs head-score files: pass --head_score FILE [FILE ...] (one per method)")
        if self.press is not None and self.press not in RANKED_PRESSES:
            raise UserError(f"--press {self.press} ranks no heads, so no method's file can change it: the judge takes "
                            f"{' or '.join(RANKED_PRESSES)} (compare every press with retrieval-head leaderboard)")
        if self.press is not None and self.mask_top is not None:
            raise UserError("--mask_top and --press ask different questions (heads masked, budgets kept): pass one "
                            "of them per run")
        if any(k < 1 for k in self.mask_top or ()):
            raise UserError("--mask_top values must be positive (random-K is drawn for each K anyway)")
        if len(self.task) > 1:
            raise UserError(f"the judge runs one task at a time (one table each); pass one --task, not "
                            f"{' '.join(self.task)}")
        if not self.seeds:
            raise UserError("--seeds needs at least one seed")
        check_seeds("--seeds", *self.seeds)
        check_distinct("--mask_top", self.mask_top)
        check_distinct("--seeds", self.seeds)
        check_press(self.press, self.budget, self.press_args)

    def applied(self) -> dict:
        """As ``SweepSettings.applied``; the press's fields only when a press judges (a masking
        run's manifest reads as before presses came to the judge), the masking's only when not."""
        out = super().applied()
        for name in ("mask_top", "mask_mode") if self.press else ("press", "budget", "press_args"):
            out.pop(name)
        return out

    def niah(self) -> NiahSettings:
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(SweepSettings)}
        return NiahSettings(**shared, needle_id=self.needle_id, mask_mode=self.mask_mode)

"""The leaderboard's settings (``retrieval-head leaderboard``), importable without torch.

An entry of ``--press`` is a press's name, ``full`` (the full cache: always run, the
reference), or ``NAME@RANKING`` for a press that ranks heads (duo, headkv) by other scores than
``--head_score``'s: ``random`` (a seeded random ranking, the reference a head file must beat)
or a method's head file beside it (``<model>.<method>.json``, e.g. ``headkv@query-focus``; an
entry whose file is missing is skipped with a note).

    >>> parse_entry("duo@random"), parse_entry("snapkv")
    (('duo', 'random'), ('snapkv', None))
    >>> LeaderboardSettings().entries()[-2:]
    [('headkv', 'query-focus'), ('duo', 'random')]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UserError
from ..inputs.tasks import TASKS
from ..options import option
from ..vocabulary import MAX_DRAWS, PRESSES, RANKED_PRESSES
from .settings import NiahSettings, SweepSettings, check_distinct, check_press, check_seeds

FULL = "full"
ENTRIES = (FULL, "streaming_llm", "snapkv", "pyramidkv", "adakv", "knorm", "duo", "headkv", "headkv@query-focus",
           "duo@random")
BUDGETS = (0.5, 0.25, 0.1, 0.05)
RANDOM = "random"


def parse_entry(entry: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@RANKING`` as (name, ranking), checked: a known press (or ``full``), a
    ranking only for a press that ranks heads."""
    name, at, ranking = entry.partition("@")
    if name != FULL and name not in PRESSES:
        raise UserError(f"--press {entry}: {name!r} is not a press; choose from {FULL}, {', '.join(PRESSES)}")
    if at and (name not in RANKED_PRESSES or not ranking):
        raise UserError(f"--press {entry}: only {' and '.join(RANKED_PRESSES)} take a ranking (@random or "
                        "@<method>, e.g. headkv@query-focus)")
    return name, ranking or None


@dataclass(frozen=True)
class LeaderboardSettings(SweepSettings):
    """Presses x budgets x tasks on one model over a grid of lengths x depths."""

    context_lengths: tuple[int, ...] | None = option((1000, 2000), "explicit lengths in tokens (overrides s/e)")
    depth_percents: tuple[int, ...] | None = option((0, 25, 50, 75, 100), "explicit depths in 0..100")
    task: tuple[str, ...] = option(("single", "multikey", "multivalue", "multiquery"),
                                   f"retrieval tasks ({', '.join(TASKS)}), one table and figure each (docs/tasks.md)")
    press: tuple[str, ...] = option(ENTRIES, "the presses compared: a press, full (the full cache, always run), or "
                                             "duo/headkv@RANKING (random: a seeded random head ranking; a method: "
                                             "<model>.<method>.json beside --head_score, skipped when missing)",
                                    metavar="PRESS[@RANKING]")
    budget: tuple[float, ...] = option(BUDGETS, "the shares of the KV cache each press keeps, in (0, 1]",
                                       metavar="F")
    phase: str = option("decode", "when each press compresses: decode (the prompt's cache after its prefill, as "
                                  "kvpress's presses) or context (the context's, the question appended whole, as "
                                  "kvpress's pipeline)", choices=("decode", "context"))
    head_score: str | None = option(None, "the head file duo and headkv rank KV heads by (any accepted format, read "
                                          "per KV head); none: head_score/<model>.kv_max.json")
    seed: int = option(0, "the seed of the random head ranking (duo@random) and of the bootstrap")
    draws: int = option(1000, f"bootstrap resamples of the cells for each interval (at most {MAX_DRAWS})")
    needle_id: int = option(0, "which needle of --needles (0-based)")

    def entries(self) -> list[tuple[str, str | None]]:
        """The presses asked, as (name, ranking), ``full`` left out (it always runs)."""
        return [e for e in map(parse_entry, self.press) if e[0] != FULL]

    def check(self) -> None:
        super().check()
        check_distinct("--press", self.press)
        entries = self.entries()
        if not entries:
            raise UserError("--press names no press (full always runs); add one, e.g. --press snapkv")
        check_press([n for n, _ in entries], self.budget, None)
        check_seeds("--seed", self.seed)
        if not 1 <= self.draws <= MAX_DRAWS:
            raise UserError(f"--draws {self.draws} is not in 1..{MAX_DRAWS}")

    def niah(self) -> NiahSettings:
        """The needle test's settings each task runs with (its conditions come from the entries)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(SweepSettings)}
        return NiahSettings(**shared, needle_id=self.needle_id, seed=self.seed)

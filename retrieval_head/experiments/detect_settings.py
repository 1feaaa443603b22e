"""The detection sweep's settings (``DetectSettings``): the one source of
``retrieval_head_detection.py``'s defaults, help and choices, importable without torch.

    >>> DetectSettings(method=["echo", "retrieval"]).methods()
    ('retrieval', 'echo')
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from ..errors import UserError
from ..inputs.tasks import TASKS
from ..methods.registry import METHODS, REPEAT, RETRIEVAL
from ..models.shape import ModelShape
from ..options import option
from ..vocabulary import MAX_DRAWS, SCORE_MODES
from .settings import SweepSettings, check_seeds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectSettings(SweepSettings):
    """Everything that defines a detection sweep besides the model: the single source of
    defaults, help and choices for the API and ``retrieval_head_detection.py``."""

    score: str = option("count", "count: every copy counts (the reference); set: each needle position once "
                                 "(the paper)", choices=SCORE_MODES, result=True)
    rouge_threshold: float = option(50.0, "a trial counts when ROUGE-1 recall x100 exceeds this", result=True)
    save_prompts: bool = option(False, "store each trial's prompt_ids in the trial log")
    method: tuple[str, ...] = option((RETRIEVAL,), "head-identification methods (any subset; see "
                                                     "methods/registry.py): retrieval, query-focus and needle-mass "
                                                     "share one sweep of needle trials; induction and echo need no "
                                                     "haystack", choices=tuple(METHODS))
    repeat_period: int = option(256, "induction/echo: distinct random tokens per repeat")
    repeat_count: int = option(4, "induction/echo: repeats of the random sequence")
    repeat_seeds: tuple[int, ...] = option((0, 1, 2), "induction/echo: one random sequence per seed (the "
                                                             "trials of their files)")
    # The adaptive sweep: which trials run, not what any trial gives (so not in the resume fingerprint).
    until_stable: int | None = option(None, "run the grid in coarse-to-fine rounds and stop once the top K heads are "
                                            "stable (see --confidence; the retrieval score of the passing trials "
                                            "decides, whatever --method says); none: every trial", metavar="K")
    confidence: float = option(0.95, "--until_stable: the share of the top K a bootstrap draw must keep on average "
                                     "(--stop_rule kept), or each head's share of draws in the top K (every)")
    stop_rule: str = option("kept", "--until_stable: kept (the top K's mean P(top-K) >= confidence) or every (each "
                                    "top-K head's P(top-K) >= confidence; strict on near ties)",
                            choices=("kept", "every"))
    draws: int = option(1000, "--until_stable: bootstrap draws after each round")
    seed: int = option(0, "the seed of the --until_stable bootstrap (its resamples and its tie-breaks); decoding is "
                          "greedy")
    task: tuple[str, ...] = option(("single",), f"the retrieval task, one ({', '.join(TASKS)}): single is the one "
                                               "needle of --needles; the others are RULER-style (docs/tasks.md)")

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.method, str) or not isinstance(self.method, tuple):  # the API: "echo" or a list
            object.__setattr__(self, "method", (self.method,) if isinstance(self.method, str) else tuple(self.method))

    def methods(self) -> tuple[str, ...]:
        """The methods asked for, each once, in ``METHODS`` order."""
        return tuple(m for m in METHODS if m in self.method)

    def repeat(self):
        from ..methods.repeat import RepeatSettings  # torch: only when induction/echo run

        return RepeatSettings(self.repeat_period, self.repeat_count, tuple(self.repeat_seeds))

    def check(self) -> None:
        super().check()
        if len(self.task) > 1:
            raise UserError(f"detection runs one task at a time (head files per task); pass one --task, not "
                            f"{' '.join(self.task)}")
        unknown = [m for m in self.method if m not in METHODS]
        if unknown or not self.method:
            raise UserError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}" if unknown else
                            "--method needs at least one method")
        if any(METHODS[m].data == REPEAT for m in self.method):
            self.repeat().check()
        if self.until_stable is not None and self.until_stable < 1:
            raise UserError(f"--until_stable must be at least 1 (the size of the top set), got {self.until_stable}")
        if not 0 < self.confidence <= 1:
            raise UserError(f"--confidence {self.confidence:g} is not in (0, 1]; pass a level such as 0.95")
        if not 1 <= self.draws <= MAX_DRAWS:
            raise UserError(f"--draws {self.draws} is not in 1..{MAX_DRAWS} (bootstrap resamples); pass a count "
                            "such as 1000")
        check_seeds("--seed", self.seed)
        check_seeds("--repeat_seeds", *self.repeat_seeds)
        if self.until_stable is None:
            self.check_not_adaptive()

    def check_not_adaptive(self) -> None:
        """The adaptive sweep's options, given without ``--until_stable``, would do nothing."""
        for name in ("confidence", "stop_rule", "draws"):
            if getattr(self, name) != ADAPTIVE_DEFAULTS[name]:
                raise UserError(f"--{name} {getattr(self, name)} is an option of the adaptive sweep; add "
                                "--until_stable K (or drop it)")
        if self.seed != ADAPTIVE_DEFAULTS["seed"]:
            log.warning("--seed %d seeds the --until_stable bootstrap; a full sweep draws nothing at random "
                        "(decoding is greedy), so it changes nothing here", self.seed)

    def check_shape(self, shape: ModelShape, world_size: int = 1) -> None:
        """What the adaptive sweep needs of the model and the launch."""
        if self.until_stable is None:
            return
        if self.until_stable > shape.num_layers * shape.num_heads:
            raise UserError(f"--until_stable {self.until_stable} exceeds the model's "
                            f"{shape.num_layers * shape.num_heads} heads; pass a smaller K")
        if world_size > 1:
            raise UserError("--until_stable runs in one process (its rounds wait on every trial so far); drop "
                            "--world_size / the launcher, or run the full grid sharded without --until_stable")


ADAPTIVE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DetectSettings)
                     if f.name in ("confidence", "stop_rule", "draws", "seed")}

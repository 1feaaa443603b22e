"""The repeated-token methods, ``induction`` and ``echo``, as method objects.

Both read one forward pass over repeated random tokens (``repeat.repeat_scores``, where the
worked example is): at every position ``p`` of repeats 2..n, each head's softmax mass on key
``p - period + key``: ``key`` 1 (the token after the previous occurrence: induction) or 0
(the previous occurrence itself: echo). One pass serves every method of the family (each a
column of one tap); each seed is a trial of its file.

    >>> Induction(period=16, repeats=3, seeds=[0, 1]), Echo().key
    (Induction(period=16, repeats=3, seeds=(0, 1)), 0)
    >>> Induction().read_at, Echo().read_at
    ('p - period + 1', 'p - period')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .method import ALL, REPEAT, Method, setting


@dataclass(frozen=True)
class RepeatMethod(Method):
    """A method of the repeated-token pass: the mass on key ``p - period + key``."""

    data: ClassVar[str] = REPEAT
    counts: ClassVar[str] = ALL
    key: ClassVar[int]
    period: int = setting(256, "repeat_period")
    repeats: int = setting(4, "repeat_count")
    seeds: tuple[int, ...] = setting((0, 1, 2), "repeat_seeds")

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(self.seeds))

    def settings(self):
        """The pass's ``repeat.RepeatSettings``."""
        from .repeat import RepeatSettings

        return RepeatSettings(self.period, self.repeats, self.seeds)

    def counters(self, scores: dict) -> dict[str, dict[str, list[float]]]:
        """Its file's ``{"layer-head": [score per seed]}`` from the pass's ``scores``."""
        from .repeat import head_counter

        return {"scores": head_counter(scores[self.name])}

    def parameters(self, settings=None, tokenizer=None, vocab: int | None = None) -> dict:
        from .repeat import repeated_tokens, token_pool

        r = self.settings()
        pool = token_pool(tokenizer, vocab)
        return dict(
            period=r.period,
            repeats=r.repeats,
            seeds=list(r.seeds),
            tokens="distinct random tokens per repeat, drawn from the vocabulary without special tokens",
            vocabulary_pool=len(pool),
            excluded_special_ids=sorted(set(tokenizer.all_special_ids)),
            bos_prepended=repeated_tokens(tokenizer, vocab, r)[1] == 1,
            target=self.read_at,
        )


@dataclass(frozen=True)
class Induction(RepeatMethod):
    """Mass on the token after the previous occurrence (Olsson et al. 2022; RazorAttention)."""

    name: ClassVar[str] = "induction"
    key: ClassVar[int] = 1
    read_at: ClassVar[str] = "p - period + 1"


@dataclass(frozen=True)
class Echo(RepeatMethod):
    """Mass on the previous occurrence itself (RazorAttention's echo heads)."""

    name: ClassVar[str] = "echo"
    key: ClassVar[int] = 0
    read_at: ClassVar[str] = "p - period"

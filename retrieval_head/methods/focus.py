"""Two attention-mass scores of the needle trials, beside the retrieval score.

Both come from the same trials (prompt -> prefill -> probed decode) as the retrieval
score: one sweep gives all three (``detect``, ``--method retrieval query-focus needle-mass``).

- ``query-focus`` (QRHead-style; Zhang et al. 2025, "Query-Focused Retrieval Heads Improve
  Long-Context Reasoning and Re-ranking", arXiv 2506.09944): for each head, the softmax
  attention mass that the **question's** tokens put on the needle's answer span during the
  prefill, averaged over the question tokens. Computed by an ``tap.AttentionTap`` on the
  question rows only (no full attention matrix). Every trial counts (it needs no answer).
  QRHead sums over a gold *document* and calibrates against a null query; here the "gold
  text" is the needle's answer span and there is no calibration.
- ``needle-mass`` (HeadKV-R2-style; Fu et al. 2024, "Not All Heads Matter: A Head-Level KV
  Cache Compression Method with Integrated Retrieval and Reasoning", arXiv 2410.19258): the
  softmax mass each head puts on the needle's answer span at every decode step of the
  answer, averaged over the steps; no token match (unlike the retrieval score, which needs
  the argmax to land on the very token emitted). Like retrieval, only trials whose answer
  passes the ROUGE check count.

Each is a method object (``method.NeedleMethod``): ``QueryFocus`` reads the prefill tap
(``engine.reads.TapRead`` of ``focus_tap``), ``NeedleMass`` the span mass of the decode
steps (``engine.reads.SpanMassRead``).

Worked example (one head, needle span [10, 12), question rows 20..21)::

    question row 20 puts 0.5 + 0.25 on keys 10, 11; row 21 puts 0.25 + 0.25
    query-focus = mean(0.75, 0.5) = 0.625
    decode step 0 puts 0.9 on the span, step 1 puts 0.1, step 2 (the stop token) 0.2
    needle-mass = mean(0.9, 0.1, 0.2) = 0.4

    >>> t = focus_tap(Prompt(ids=[0] * 24, needle_span=(10, 12), insert_at=0, haystack_tokens=0,
    ...                      question_span=(20, 22)))
    >>> t.rows.tolist(), t.lo[:, 0].tolist(), t.hi[:, 0].tolist()
    ([20, 21], [10, 10], [12, 12])

A row's scores are the reads' results (``Decoded.reads``)::

    >>> from types import SimpleNamespace
    >>> row = SimpleNamespace(reads={"tapped": "question rows' mass", "span_mass": "decode steps' mass"})
    >>> QueryFocus().score_row(row), NeedleMass().score_row(row)
    ("question rows' mass", "decode steps' mass")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import UserError
from ..inputs.prompt import Prompt
from .method import ALL, PASSING, NeedleMethod


def check_question(prompt: Prompt) -> None:
    """Refuse query-focus where the question's tokens cannot be found (the CLI checks one
    prompt before the weights load)."""
    if prompt.question_span is None:
        raise UserError("query-focus needs the question's tokens, and the tokenizer gives no character offsets "
                        "to find them; use a fast tokenizer or drop query-focus from --method")


def focus_tap(prompt: Prompt):
    """The tap (``tap.AttentionTap``) of one trial's prefill: the question's rows, each on the needle span."""
    import torch

    from ..core.tap import AttentionTap

    check_question(prompt)
    a, b = prompt.question_span
    rows = torch.arange(a, b)
    s, e = prompt.needle_span
    return AttentionTap(rows, torch.full_like(rows, s), torch.full_like(rows, e))


@dataclass(frozen=True)
class QueryFocus(NeedleMethod):
    """The question rows' prefill mass on the needle span (module docstring); every trial counts."""

    name: ClassVar[str] = "query-focus"
    counts: ClassVar[str] = ALL
    field: ClassVar[str] = "query_focus"
    question: ClassVar[bool] = True
    read_at: ClassVar[str] = "the question's tokens, prefill"

    def reads(self) -> tuple:
        from ..engine.reads import TapRead

        return (TapRead("tapped", focus_tap),)

    def check(self, prompt: Prompt) -> None:
        check_question(prompt)

    def score_row(self, row):
        return row.reads["tapped"]


@dataclass(frozen=True)
class NeedleMass(NeedleMethod):
    """The decode steps' mass on the needle span (module docstring); passing trials count."""

    name: ClassVar[str] = "needle-mass"
    counts: ClassVar[str] = PASSING
    field: ClassVar[str] = "needle_mass"
    read_at: ClassVar[str] = "every decode step of the answer"

    def reads(self) -> tuple:
        from ..engine.reads import SpanMassRead

        return (SpanMassRead(),)

    def score_row(self, row):
        return row.reads["span_mass"]

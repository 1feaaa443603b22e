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

Worked example (one head, needle span [10, 12), question rows 20..21)::

    question row 20 puts 0.5 + 0.25 on keys 10, 11; row 21 puts 0.25 + 0.25
    query-focus = mean(0.75, 0.5) = 0.625
    decode step 0 puts 0.9 on the span, step 1 puts 0.1, step 2 (the stop token) 0.2
    needle-mass = mean(0.9, 0.1, 0.2) = 0.4

    >>> t = focus_tap(Prompt(ids=[0] * 24, needle_span=(10, 12), insert_at=0, haystack_tokens=0,
    ...                      question_span=(20, 22)))
    >>> t.rows.tolist(), t.lo[:, 0].tolist(), t.hi[:, 0].tolist()
    ([20, 21], [10, 10], [12, 12])
"""

from __future__ import annotations

import torch

from ..core.tap import AttentionTap
from ..errors import UserError
from ..inputs.prompt import Prompt
from .registry import METHODS


def check_question(prompt: Prompt) -> None:
    """Refuse query-focus where the question's tokens cannot be found (the CLI checks one
    prompt before the weights load)."""
    if prompt.question_span is None:
        raise UserError("query-focus needs the question's tokens, and the tokenizer gives no character offsets "
                        "to find them; use a fast tokenizer or drop query-focus from --method")


def focus_tap(prompt: Prompt) -> AttentionTap:
    """The tap of one trial's prefill: the question's rows, each on the needle span."""
    check_question(prompt)
    a, b = prompt.question_span
    rows = torch.arange(a, b)
    s, e = prompt.needle_span
    return AttentionTap(rows, torch.full_like(rows, s), torch.full_like(rows, e))


def scheduler_options(methods: tuple[str, ...]) -> dict:
    """What the scheduler must record for ``methods`` besides the probe: the prefill tap of
    the question's rows (``tap_for``, query-focus) and the needle-span mass of the decode
    rows (``span_mass``, needle-mass); the ``Scheduler.run`` keywords."""
    rows = {METHODS[m].row for m in methods}
    return dict(tap_for=(lambda job: focus_tap(job.prompt)) if "tapped" in rows else None,
                span_mass="span_mass" in rows)


def trial_fields(row, methods: tuple[str, ...]) -> dict:
    """The per-trial scores of the methods asked for that a scheduler row carries, as
    trial-record fields (``[layers][heads]``), in ``methods``' order."""
    return {METHODS[m].field: getattr(row, METHODS[m].row).tolist() for m in methods if METHODS[m].row}

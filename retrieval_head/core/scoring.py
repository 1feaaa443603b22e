"""Retrieval scores of one trial, and the answer check that decides whether it counts.

At decode step t the model emits y_t. Query head (l, h) *copies* when its argmax key
position j lies in the needle's answer span [s, e) and ``prompt_ids[j] == y_t``.

- ``count`` (the reference's): each copy adds 1/(e - s); repeated copies count again,
  so a trial score can exceed 1.
- ``set`` (the paper's definition): each span position counts once per head.

Worked example: span [10, 14) holds ids [7, 8, 9, 7]; the model emits 7, 8, 7.
A head pointing at 10, 11, 13 copies three times: count = 3/4 = 0.75, set = 3/4.
A head pointing at 10, 11, 10 copies three times too: count = 0.75, but set = 2/4.

Counts are kept as integers on the model's device (no host sync per step) and divided
in float64 at the end, so scores are exact fractions k/(e - s) and reproducible.
"""

from __future__ import annotations

import torch
from rouge_score import rouge_scorer

from ..vocabulary import SCORE_MODES  # noqa: F401 (the choices, re-exported)

_ROUGE = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1_recall(response: str, real_needle: str) -> float:
    """ROUGE-1 recall of the response against the answer, x100 (the original's metric).

    >>> rouge1_recall("Captain Juniper, a parrot", "Captain Juniper")
    100.0
    """
    return _ROUGE.score(real_needle, response)["rouge1"].recall * 100


class RetrievalScorer:
    """Accumulates per-head copies for one trial; vectorised over layers and heads."""

    def __init__(self, prompt_ids: list[int], span: tuple[int, int], num_layers: int, num_heads: int,
                 mode: str = "count", device: torch.device | str = "cpu"):
        if mode not in SCORE_MODES:
            raise ValueError(f"score mode must be one of {SCORE_MODES}")
        self.s, self.e = span
        self.mode = mode
        self.prompt = torch.tensor(prompt_ids, device=device)
        self.copies = torch.zeros(num_layers, num_heads, dtype=torch.long, device=device)
        self.seen = torch.zeros(num_layers, num_heads, self.e - self.s, dtype=torch.bool, device=device)

    def update(self, positions: torch.Tensor, token: int) -> None:
        """positions: ``[layers, heads]`` (or ``[layers, 1, heads]``) absolute argmax positions."""
        pos = positions.reshape(self.copies.shape).to(self.prompt.device)
        in_span = (pos >= self.s) & (pos < self.e)
        same = self.prompt[pos.clamp(0, len(self.prompt) - 1)] == token
        hit = in_span & same
        self.copies += hit
        idx = (pos - self.s).clamp(0, self.e - self.s - 1).unsqueeze(-1)
        self.seen.scatter_(-1, idx, self.seen.gather(-1, idx) | hit.unsqueeze(-1))

    def scores(self) -> torch.Tensor:
        """float64 ``[layers, heads]`` trial scores under the chosen mode."""
        k = self.copies if self.mode == "count" else self.seen.sum(-1)
        return k.cpu().double() / (self.e - self.s)


def trial_scores(prompt_ids: list[int], span: tuple[int, int], positions: torch.Tensor, tokens: list[int],
                 mode: str = "count") -> torch.Tensor:
    """float64 ``[layers, heads]`` scores of one decoded answer: ``positions[t]`` is the
    probe's ``[layers, heads]`` argmax positions at the step that emitted ``tokens[t]``.

    >>> pos = torch.tensor([[[10, 3]], [[11, 11]], [[13, 10]]])      # 3 steps, 1 layer, 2 heads
    >>> trial_scores([0] * 10 + [7, 8, 9, 7], (10, 14), pos, [7, 8, 7]).tolist()
    [[0.75, 0.5]]
    """
    sc = RetrievalScorer(prompt_ids, span, positions.shape[1], positions.shape[2], mode, device=positions.device)
    for step, token in zip(positions, tokens):
        sc.update(step, token)
    return sc.scores()


def spans_scores(prompt_ids: list[int], spans, positions: torch.Tensor, tokens: list[int],
                 mode: str = "count") -> torch.Tensor:
    """float64 ``[layers, heads]``: ``trial_scores`` summed over several spans, e.g. a task's
    distractors (each copy counts for the span it copies from; zeros for no span).

    >>> pos = torch.tensor([[[2, 5]], [[3, 6]]])                      # 2 steps, 1 layer, 2 heads
    >>> spans_scores([0, 0, 7, 8, 0, 7, 8], [(2, 4), (5, 7)], pos, [7, 8]).tolist()
    [[1.0, 1.0]]
    """
    out = torch.zeros(positions.shape[1], positions.shape[2], dtype=torch.float64)
    for span in spans:
        out += trial_scores(prompt_ids, tuple(span), positions, tokens, mode)
    return out

"""The retrieval score (Wu et al. 2024, arXiv 2404.15574): at each decode step of the
answer, a head copies when its argmax key is a needle token equal to the token emitted;
its score in a trial is its copies over the needle's length (``core.scoring``). Only
trials whose answer passes the ROUGE check count.

It reads the argmax probe (``engine.reads.ArgmaxRead``), which runs in every trial of the
sweep: every trial record holds its ``head_scores``, and its files are written whenever the
sweep runs. They are the original's: ``<model>.json``, and for a GQA model per KV head
``<model>.kv_max.json`` / ``<model>.kv_mean.json`` (each trial's group max / mean); its
manifest is the sweep's.

Worked example: a needle of 4 tokens at positions 10..13; a head whose argmax lands on
position 11 when the answer emits the token there copies once: score 1/4::

    >>> from types import SimpleNamespace
    >>> import torch
    >>> ids = list(range(20)); positions = torch.zeros(2, 1, 1, dtype=torch.long)
    >>> positions[0, 0, 0] = 11                                   # step 0 looks at position 11
    >>> row = SimpleNamespace(job=SimpleNamespace(prompt=SimpleNamespace(ids=ids, needle_span=(10, 14))),
    ...                       positions=positions, ids=[11, 0])   # and emits the token there
    >>> Retrieval().score_row(row).tolist()
    [[0.25]]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .method import PASSING, RETRIEVAL, NeedleMethod


@dataclass(frozen=True)
class Retrieval(NeedleMethod):
    """The retrieval score (module docstring); ``score``: ``count`` (every copy counts, the
    reference) or ``set`` (each needle position once, the paper)."""

    name: ClassVar[str] = RETRIEVAL
    counts: ClassVar[str] = PASSING
    field: ClassVar[str] = "head_scores"
    read_at: ClassVar[str] = "every decode step's argmax"
    score: str = "count"

    def reads(self) -> tuple:
        from ..engine.reads import ArgmaxRead

        return (ArgmaxRead(),)

    def score_row(self, row):
        from ..core.scoring import trial_scores

        prompt = row.job.prompt
        return trial_scores(prompt.ids, prompt.needle_span, row.positions, row.ids, self.score)

    def file_name(self, model: str) -> str:
        return f"{model}.json"

    def outputs(self, out: Path, model: str) -> dict[str, Path]:
        """``<model>.json`` and the per-KV-head files; no manifest of its own (the sweep's)."""
        return {
            "scores": out / self.file_name(model),
            "kv_max": out / f"{model}.kv_max.json",
            "kv_mean": out / f"{model}.kv_mean.json",
        }

    def counters(self, result, info: dict) -> dict[str, dict[str, list[float]]]:
        out = {"scores": result.head_counter()}
        kv = info["num_kv_heads"]
        if kv < info["num_heads"]:  # GQA: the granularity KV-cache compression works at
            out.update({f"kv_{agg}": result.kv_head_counter(kv, agg) for agg in ("max", "mean")})
        return out

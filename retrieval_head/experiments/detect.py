"""Retrieval-head detection: needle trials scored head by head.

Python API (a notebook)::

    from retrieval_head import load_model, ModelSpec, detect, DetectSettings
    model, tok, _ = load_model(ModelSpec())           # the embedded SmolLM2
    result = detect(model, tok, DetectSettings(context_lengths=(800,), depth_percents=(25, 75)))
    result.mean_scores().shape                        # torch.Size([30, 9]): [layers, heads]

The algorithm (``detect``): for every (needle, length, depth) trial, build the prompt,
prefill it, greedy-decode the answer under the ``ArgmaxProbe``, score each head's copies
(``scoring.trial_scores``) and record the trial. A trial counts when the answer's ROUGE-1
recall exceeds the threshold; a head's score is the mean of its trial scores over counted
trials. How the prompts are prefilled and decoded (prefix reuse, batches) is the
``schedule`` layer's business: it changes no score and no response.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..core.decode import check_supported, stop_token_mask
from ..core.scoring import rouge1_recall, spans_scores
from ..engine.progress import Progress, Status, count, tell
from ..engine.scheduler import Decoded, Job, Scheduler
from ..inputs.haystack import Needle
from ..inputs.tasks import string_match
from ..methods.method import NeedleMethod
from ..methods.registry import ALL, METHODS, NEEDLE, RETRIEVAL, chosen, of_data
from ..models.shape import ModelShape
from . import adaptive
from .detect_settings import ADAPTIVE_DEFAULTS, DetectSettings  # noqa: F401 (re-exported: the API)
from .sweep import Plan, TrialKey, plan

log = logging.getLogger(__name__)


def detect(model, tokenizer, settings: DetectSettings = DetectSettings(), *,
           on_trial: Callable[[dict], None] | None = None, progress: bool = True,
           done: dict[TrialKey, dict] | None = None, checked: Plan | None = None,
           shard: tuple[int, int] = (0, 1), status: Status | None = None) -> "DetectionResult":
    """Run every trial and return their records; ``on_trial`` sees each new one as it finishes.

    ``done`` maps trial keys to records of trials that already ran with the same settings
    (a resumed run): they are reused, not run again. ``checked`` is this sweep's ``plan``
    when the caller already made it. ``shard`` = ``(rank, world_size)`` runs only this
    rank's share of the trials (``sweep.Plan.keys``). ``settings.until_stable`` = K runs
    the grid in coarse-to-fine rounds until the top K is stable (``adaptive.sweep``; one
    process only); the result's ``stats["adaptive"]`` says where it stopped. ``status``
    hears each phase until the first trial finishes (``engine.progress``; None: logged).
    """
    shape, done = ModelShape.of(model), done or {}
    if checked is None:
        tell(status, "reading the haystack and laying out the trials")
    trials = checked or plan(tokenizer, shape, settings, task=settings.task[0])
    check_supported(model)
    settings.check_shape(shape, shard[1])
    new_tokens, newline = settings.decoding(trials.task)
    scheduler = Scheduler(model, shape, stop_token_mask(model, tokenizer, newline), new_tokens, settings.levers())
    if settings.until_stable is None:
        records = _run(trials.keys(shard), trials, scheduler, tokenizer, settings, done, on_trial, progress, status)
        return DetectionResult(shape.num_layers, shape.num_heads, records, scheduler.stats)
    # the adaptive sweep: rounds of the grid until the top K is stable (adaptive.py)
    run_round = lambda keys: _run(keys, trials, scheduler, tokenizer, settings, done, on_trial, progress,  # noqa: E731
                                  status)
    records, summary = adaptive.sweep(trials, settings, run_round)
    return DetectionResult(shape.num_layers, shape.num_heads, records, dict(scheduler.stats, adaptive=summary))


def _run(keys: list[TrialKey], trials: Plan, scheduler: Scheduler, tokenizer, settings: DetectSettings,
         done: dict, on_trial, progress: bool, status: Status | None = None) -> list[dict]:
    """The records of ``keys``: reused from ``done``, else run through the scheduler."""
    records = [done[k] for k in keys if k in done]
    jobs = [Job(k, trials.prompt(k), trials.source(k)) for k in keys if k not in done]
    # what the methods read on a trial (retrieval: the argmax probe; query-focus: the prefill tap; needle-mass:
    # the span mass), each read once
    reads = tuple({r.name: r for m in sweep_methods(settings) for r in m.reads()}.values())
    with Progress(len(jobs), "detect", "trial", progress, status) as bar:
        bar.say(f"{count(len(jobs), 'trial')} to run" + (f" ({len(records)} of {len(keys)} done before: resumed)"
                                                         if records else ""))
        # prompt -> prefill -> decode under the probe (and the other methods' reads)
        for row in scheduler.run(jobs, reads=reads, say=bar.say):
            record = trial_record(tokenizer, row, trials.needle(row.job.key), settings)  # -> score -> record
            records.append(record)
            bar.update(1)
            if on_trial is not None:
                on_trial(record)
    return records


def sweep_methods(st: DetectSettings) -> tuple[NeedleMethod, ...]:
    """The sweep's methods: retrieval first and always (every trial's record holds its
    scores: the probe runs anyway), then the other needle methods asked for, in order."""
    return chosen(st, (RETRIEVAL,) + tuple(m for m in of_data(st.methods(), NEEDLE) if m != RETRIEVAL))


def trial_record(tokenizer, row: Decoded, needle: Needle, st: DetectSettings) -> dict:
    """One decoded trial: its key, prompt facts, answer, ROUGE check and head scores; for a
    generated task (a ``TaskPrompt``), its answers, string match and the heads' copies from
    the distractors' value spans (``distractor_scores``, scored as ``head_scores``)."""
    prompt = row.job.prompt
    trial = getattr(prompt, "trial", None)
    if trial is not None:  # the asked values stand for the needle's answer
        needle = Needle(needle.needle_id, " ".join(i.text for i in trial.inserts if i.asked), trial.question,
                        " ".join(trial.answers))
    text = tokenizer.decode(row.ids, skip_special_tokens=True).strip()
    recall = rouge1_recall(text, needle.real_needle)
    retrieval, *others = sweep_methods(st)
    record = {
        **row.job.key._asdict(),
        "prompt_length": len(prompt.ids),
        "needle_span": list(prompt.needle_span),
        "insert_at": prompt.insert_at,
        "response": text,
        "response_ids": row.ids,
        "rouge1_recall": recall,
        "passed": recall > st.rouge_threshold,
        retrieval.field: retrieval.score_row(row).tolist(),  # head_scores
        "duration_s": round(row.seconds, 4),
        **{m.field: m.score_row(row).tolist() for m in others},  # the other methods' scores, when asked for
    }
    if trial is not None:
        match, (new_tokens, newline) = 100 * string_match(text, trial.answers), st.decoding(trial.task)
        record.update(task=trial.task, answers=list(trial.answers), string_match=match, max_new_tokens=new_tokens,
                      stop="eos or newline" if newline else "eos",
                      value_spans=[list(x) for x in prompt.spans], asked=[i.asked for i in trial.inserts],
                      distractor_scores=spans_scores(prompt.ids, prompt.distractor_spans(), row.positions, row.ids,
                                                     st.score).tolist())
    if st.save_prompts:
        record["prompt_ids"] = prompt.ids
    return record


@dataclass
class DetectionResult:
    """All trial records of a sweep; the head scores are derived from them."""

    num_layers: int
    num_heads: int
    trials: list[dict]
    stats: dict = field(default_factory=dict)  # how the sweep ran (prefill tokens, decode batches)

    def passed(self) -> list[dict]:
        return sorted((t for t in self.trials if t["passed"]), key=TrialKey.of)

    def head_counter(self, method: str = RETRIEVAL) -> dict[str, list[float]]:
        """The original's format: ``{"layer-head": [score of each counted trial]}`` of a
        needle method (``methods.registry``): for ``query-focus`` every trial counts (it
        needs no answer), else the passing ones."""
        spec = METHODS.get(method)
        if spec is None or spec.data != NEEDLE:
            raise ValueError(f"{method!r} is not a method of the needle trials; choose from "
                             f"{', '.join(m for m in METHODS if METHODS[m].data == NEEDLE)}")
        trials = sorted(self.trials, key=TrialKey.of) if spec.counts == ALL else self.passed()
        rows = [t[spec.field] for t in trials]
        return {f"{l}-{h}": [r[l][h] for r in rows] for l in range(self.num_layers) for h in range(self.num_heads)}

    def distractor_counter(self) -> dict[str, list[float]]:
        """The original's format of every trial's ``distractor_scores`` (a generated task's
        copies from its distractors; every trial counts, since a wrong answer is the point).

        >>> r = DetectionResult(1, 2, [dict(needle_id=0, context_length=1, depth_percent=0, passed=False,
        ...                                 distractor_scores=[[0.5, 0.0]])])
        >>> r.distractor_counter()
        {'0-0': [0.5], '0-1': [0.0]}
        """
        rows = [t["distractor_scores"] for t in sorted(self.trials, key=TrialKey.of)]
        return {f"{l}-{h}": [r[l][h] for r in rows] for l in range(self.num_layers) for h in range(self.num_heads)}

    def kv_head_counter(self, num_kv_heads: int, agg: str) -> dict[str, list[float]]:
        """Per-KV-head scores in the same format (``"layer-kvhead"``): each trial's query-head
        scores aggregated over the KV head's group (``max`` or ``mean``), then listed per
        counted trial. Query head h reads KV head ``h // (heads // kv_heads)``.

        >>> r = DetectionResult(1, 4, [dict(needle_id=0, context_length=1, depth_percent=0, passed=True,
        ...                                 head_scores=[[0.5, 0.1, 0.0, 0.2]])])
        >>> r.kv_head_counter(2, "max"), r.kv_head_counter(2, "mean")
        ({'0-0': [0.5], '0-1': [0.2]}, {'0-0': [0.3], '0-1': [0.1]})
        """
        group = self.num_heads // num_kv_heads
        rows = torch.tensor([t["head_scores"] for t in self.passed()], dtype=torch.float64)
        rows = rows.reshape(len(rows), self.num_layers, num_kv_heads, group)
        kv = rows.amax(-1) if agg == "max" else rows.mean(-1)  # [trials, layers, kv_heads]
        return {f"{l}-{k}": kv[:, l, k].tolist() for l in range(self.num_layers) for k in range(num_kv_heads)}

    def mean_scores(self) -> torch.Tensor:
        """float64 ``[layers, heads]``: mean over counted trials (zeros when none counted)."""
        rows = [t["head_scores"] for t in self.passed()]
        if not rows:
            return torch.zeros(self.num_layers, self.num_heads, dtype=torch.float64)
        return torch.tensor(rows, dtype=torch.float64).mean(0)

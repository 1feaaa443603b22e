"""Needle-in-a-haystack with heads masked: top-K vs random-K vs none.

Conditions (``--mask_top K``, the original's ``--mask_topk K``):
  K > 0  mask the K best heads by mean retrieval score (ties in layer-major order);
  K < 0  mask |K| random heads, drawn with a recorded seed from the heads that are *not*
         retrieval heads (see ``select_random``);
  K = 0  mask nothing.

The experiment (``run_niah``): for every (length, depth) cell, build the prompt, prefill
it once, greedy-decode the answer under each condition's mask, score it (ROUGE-1 recall
of the answer) and record it. Decode-phase masks (the default, as the original) share the
cell's prefill; how prompts are prefilled and decoded together is the ``schedule`` layer's
business and changes no response.

The top-K rule is ``headfiles.ranking.select_top`` (the one rule, ties layer-major).
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from ..core.decode import check_supported, stop_token_mask
from ..core.mask import HeadMask
from ..core.scoring import rouge1_recall
from ..core.stream import full_kv_heads, kv_kept
from ..engine.progress import Progress, Status, count, tell
from ..engine.scheduler import Decoded, Job, Scheduler
from ..errors import UserError
from ..headfiles.ranking import select_top, top_heads
from ..inputs.haystack import Needle
from ..inputs.tasks import TaskPrompt, string_match
from ..models.shape import ModelShape
from ..store.manifest import utc_now
from .condition import Condition, scheduled  # Condition re-exported: the API and the commands read it here
from .settings import NiahSettings
from .sweep import Plan, TrialKey, plan

log = logging.getLogger(__name__)

RANDOM_EXCLUDE_SCORE = 0.1  # a head scoring this much is a retrieval head: never a random pick
RANDOM_EXCLUDE_FRACTION = 0.10  # ... and the top max(K, 10%) heads are excluded regardless
RECORD_VERSION = 1  # the original's "version" field of a result file


def random_pool(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """Heads random draws may use: not scoring >= 0.1 and not in the top max(k, 10%)."""
    n_top = max(k, math.ceil(RANDOM_EXCLUDE_FRACTION * scores.numel()))
    excluded = {(l, h) for l, h, _ in top_heads(scores, n_top)}
    excluded |= {tuple(x) for x in (scores >= RANDOM_EXCLUDE_SCORE).nonzero().tolist()}
    return [(l, h) for l in range(scores.shape[0]) for h in range(scores.shape[1]) if (l, h) not in excluded]


def select_random(scores: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """bool ``[layers, heads]``: k heads drawn with ``seed`` from ``random_pool``."""
    pool = random_pool(scores, k)
    if k > len(pool):
        raise UserError(
            f"--mask_top -{k}: only {len(pool)} heads remain after excluding retrieval heads "
            f"(score >= {RANDOM_EXCLUDE_SCORE} or top max(K, 10%)); use a smaller K"
        )
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(scores.shape, dtype=torch.bool)
    for i in torch.randperm(len(pool), generator=g)[:k].tolist():
        out[pool[i]] = True
    return out


def make_conditions(model_name: str, ks: list[int], scores: torch.Tensor | None, mode: str, phase: str,
                    seeds: list[int], seed_folders: bool, group: int | None = None) -> list[Condition]:
    """Resolve ``--mask_top`` values (and seeds for random draws) into conditions.

    ``group`` (query heads per KV head) switches to KV units: ``scores`` is then
    ``[layers, kv_heads]`` and each selected KV head masks all the query heads it serves.
    """
    suffix = ("" if mode == "uniform" else f"_{mode}") + ("" if phase == "decode" else f"_{phase}")
    suffix += "_kv" if group else ""
    unit = "kv" if group else "query"

    def as_mask(sel: torch.Tensor) -> HeadMask:
        return HeadMask(sel.repeat_interleave(group, dim=1) if group else sel, mode, phase)

    out = []
    for k in ks:
        if k == 0:
            out.append(Condition("none", 0, None, folder=model_name))
            continue
        if scores is None:
            raise UserError("masking needs head scores; pass --head_score FILE or run retrieval_head_detection.py")
        if k > 0:
            out.append(Condition("top", k, as_mask(select_top(scores, k)),
                                 folder=f"{model_name}_block_top{k}{suffix}", unit=unit))
            continue
        for s in seeds:
            folder = f"{model_name}_block_random{-k}{suffix}" + (f"_seed{s}" if seed_folders else "")
            out.append(Condition("random", -k, as_mask(select_random(scores, -k, s)), s, folder, unit))
    return out


def run_niah(model, tokenizer, settings: NiahSettings, conditions: list[Condition], *, model_name: str = "",
             on_record: Callable[[Condition, dict], None] | None = None, progress: bool = True,
             skip: frozenset = frozenset(), checked: Plan | None = None, task: str = "single",
             status: Status | None = None) -> dict[str, list[dict]]:
    """Every (length, depth) cell under every condition, but the cells in ``skip`` (trial
    keys already done); the new records by condition folder, in grid order, each passed to
    ``on_record`` as it is made. ``checked``: this test's ``plan``, when already made (its
    task wins over ``task``, the one of ``settings.task`` to run). ``status`` hears each phase
    until the first answer is scored (``engine.progress``; None: logged); the bar counts
    trials, a cell under one condition each."""
    shape = ModelShape.of(model)
    if checked is None:
        tell(status, "reading the haystack and laying out the cells")
    cells = checked or plan(tokenizer, shape, settings, [settings.the_needle()], task)
    check_supported(model)
    needle = cells.needles[0]
    jobs = [Job(k, cells.prompt(k), cells.source(k)) for k in cells.keys() if k not in skip]
    new_tokens, newline = settings.decoding(cells.task)
    scheduler = Scheduler(model, shape, stop_token_mask(model, tokenizer, newline), new_tokens, settings.levers())
    out: dict[str, list[dict]] = {c.folder: [] for c in conditions}
    itemsize = next(model.parameters()).element_size()
    with Progress(len(jobs) * len(conditions), "niah", "trial", progress, status) as bar:
        bar.say(f"{count(len(jobs), 'cell')} x {count(len(conditions), 'condition')} = {count(bar.total, 'trial')}")
        masks = scheduled(shape, conditions, settings.cache)  # each condition's mask, or its real cache
        for row in scheduler.run(jobs, masks=masks, say=bar.say):  # prefill -> decode
            c = conditions[row.mask]
            record = niah_record(tokenizer, row, needle, c, model_name, shape, itemsize)  # -> score -> record
            if cells.task != "single":  # what decoding applied (a single-needle record stays as it was)
                record.update(max_new_tokens=new_tokens, stop="eos or newline" if newline else "eos")
            out[c.folder].append(record)
            bar.update(1)
            if on_record is not None:
                on_record(c, record)
    for recs in out.values():  # rows finish in insertion and batch order; report them in grid order
        recs.sort(key=lambda r: (r["context_length"], r["depth_percent"]))
    return out


def niah_record(tokenizer, row: Decoded, needle: Needle, c: Condition, model_name: str,
                shape: ModelShape | None = None, itemsize: int = 2) -> dict:
    """One condition's answer in one cell, in the original's format plus the intervention
    (with, for streaming, the fraction of the KV cache a compressed cache keeps; for a press,
    the bytes its keep sets hold, ``press.press_fields``) and ids."""
    key: TrialKey = row.job.key
    text = tokenizer.decode(row.ids, skip_special_tokens=True).strip()
    mask = c.describe()
    if c.kind == "press" and shape is not None and row.kept_keys is not None:
        from .press import press_fields

        at = row.job.prompt.context_end if c.mask.phase == "context" else None
        mask.update(press_fields(row.kept_keys, len(row.job.prompt.ids), shape, itemsize, at))
        if row.kv_bytes is not None:  # on the real pressed cache: the bytes it held, measured
            mask.update(cache_fields(row), kv_kept=row.kv_bytes / row.kv_bytes_full)
    elif isinstance(c.mask, HeadMask) and c.mask.mode == "stream" and shape is not None:
        kept = kv_kept(shape, key.context_length, c.mask.sink, c.mask.recent, full_kv_heads(shape, c.kept))
        mask.update(kv_kept=float(kept), kv_kept_exact=f"{kept.numerator}/{kept.denominator}",
                    **cache_fields(row))
    trial = getattr(row.job.prompt, "trial", None)
    if trial is not None:  # a generated task: its needle, question and answers stand for the single needle's
        asked = [i.text for i in trial.inserts if i.asked]
        needle = Needle(needle.needle_id, " ".join(asked), trial.question, " ".join(trial.answers))
    record = {
        "model": model_name, "context_length": key.context_length, "depth_percent": key.depth_percent,
        "version": RECORD_VERSION, "needle": needle.needle, "model_response": text,
        "score": rouge1_recall(text, needle.real_needle), "test_duration_seconds": round(row.seconds, 4),
        "test_timestamp_utc": utc_now(), "question": needle.question, "real_needle": needle.real_needle,
        "needle_span": list(row.job.prompt.needle_span), "response_ids": row.ids, "mask": mask,
    }
    return record if trial is None else record | task_fields(row.job.prompt, text)


def cache_fields(row: Decoded) -> dict:
    """What a streaming record adds: which cache ran it, and for the real one its bytes."""
    if row.kv_bytes is not None:
        return {"cache": "real", "kv_bytes": row.kv_bytes, "kv_bytes_full": row.kv_bytes_full}
    return {"cache": "masked"}


def task_fields(prompt: TaskPrompt, response: str) -> dict:
    """What a generated task's record adds: the task, every insert with its token span, the
    answers, RULER's string match (x100), whether every answer was returned, and which
    distractors' values the response holds (string match does not count them against it)."""
    t = prompt.trial
    match = string_match(response, t.answers)
    inserts = [{"text": i.text, "value": i.value, "asked": i.asked, "depth": round(i.depth, 4), "span": list(s)}
               for i, s in zip(t.inserts, prompt.spans)]
    copied = [i.value for i in t.distractors() if i.value.lower() in response.lower()]
    return {"task": t.task, "answers": list(t.answers), "inserts": inserts, "string_match": 100 * match,
            "correct": match == 1.0, "distractors_answered": copied}
